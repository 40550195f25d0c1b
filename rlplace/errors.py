"""The one exception type that reaches a user as a clear message (CLI exit status 2)."""

from __future__ import annotations


class RlplaceError(Exception):
    """A problem with the user's input: the message names what is wrong and what to do.

    The CLI prints ``error: <message>`` on one line and exits with status 2; library callers
    catch it like any other exception. Programming errors are never wrapped in it.
    """
