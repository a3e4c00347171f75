"""Google Drive: the FUSE mount in Colab, the Drive API elsewhere, and locations (``drive:...``,
paths and URLs) resolved to a file system and a path. Public names: :mod:`colabsession.drive`."""
