"""The one-call start of a session: the parts it brings back (the environment, datasets, caches,
the run), run at once in threads of their own, and the report of what each did. Public names:
:func:`colabsession.session` and its records."""
