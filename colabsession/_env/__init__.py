"""Persistent environments: the manifest, building a layer with pip or uv, persisting it to and
fetching it from the location, the layer's home on local disk, and activating it. Public names:
:mod:`colabsession.env`."""
