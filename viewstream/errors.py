"""Errors a user can fix: the CLI prints them as one line, without a traceback."""


class UsageError(ValueError):
    """Bad input that the user can correct (a path, a flag value, a config field).

    The message names the problem and, where there is a choice, the allowed values.
    """
