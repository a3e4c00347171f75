"""Datasets packed once on Drive and staged to local disk: archives, shards and their manifest, the
walk that reads sources, packing and staging. Public names: :mod:`colabsession.data`."""
