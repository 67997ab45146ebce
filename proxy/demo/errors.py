"""The demo's one error: a link in the chain (a process, an admin answer, the config edit) failed."""

from __future__ import annotations


class DemoError(Exception):
    """A link in the chain failed; the message says which and what it last logged."""
