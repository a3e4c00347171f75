"""Shared plumbing every other part uses: the error tree, user messages, units and durations,
typed records read from untrusted files, bounded calls and subprocesses, optional imports and
plain file helpers. Imports nothing else of colabsession."""
