"""Where the shell keeps its command history: ``$XDG_STATE_HOME/qio/history``."""

from __future__ import annotations

import os
from pathlib import Path


def history_path(environ: dict[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME/qio/history``, or ``~/.local/state/qio/history``.

    The XDG base-directory rules say a relative ``XDG_STATE_HOME`` is invalid and must be
    ignored, so it is.
    """
    env = os.environ if environ is None else environ
    state = env.get("XDG_STATE_HOME", "")
    if state and os.path.isabs(state):
        base = Path(state)
    else:
        home = env.get("HOME") or os.path.expanduser("~")
        base = Path(home) / ".local" / "state"
    return base / "qio" / "history"
