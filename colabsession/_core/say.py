"""The one way colabsession tells the user something in a notebook cell's output."""

from __future__ import annotations


def say(text: str) -> None:
    """Print ``colabsession: <text>`` at once (flushed: a cell shows it before a long wait).

    Warnings about something going wrong go to ``logging`` instead; this is for what the user
    asked for and should see: what was restored, staged or saved, and how long it took.
    """
    print(f"colabsession: {text}", flush=True)
