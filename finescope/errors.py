"""Errors meant for the person running the study."""

import difflib
from collections.abc import Iterable


class FinescopeError(ValueError):
    """A problem with the user's config, data or models.

    The message says what is wrong, where (file:line or config key) and what to do.
    """


def unknown_key_hint(key: str, allowed: Iterable[str]) -> str:
    """``did you mean 'x'? allowed keys are a, b, x`` for a key that is not among ``allowed``."""
    allowed = sorted(allowed)
    close = difflib.get_close_matches(str(key), allowed, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"{hint}allowed keys are {', '.join(allowed)}"
