"""Framework caches kept on Drive: see :mod:`colabsession.cache`."""
