"""The terminal renderer (rich); until it grows its own views it draws plain text."""

from __future__ import annotations

from qio.render.plain import PlainRenderer


class TerminalRenderer(PlainRenderer):
    pass
