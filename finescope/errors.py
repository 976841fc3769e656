"""Errors meant for the person running the study."""


class FinescopeError(ValueError):
    """A problem with the user's config, data or models.

    The message says what is wrong, where (file:line or config key) and what to do.
    """
