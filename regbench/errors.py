"""Errors a user can act on. The CLI prints their message on one line and exits with code 2."""


class RegbenchError(Exception):
    """Base class: the message names the problem and the fix."""


class ConfigError(RegbenchError):
    """A config value is invalid; the message names the key, the bad value and what is allowed."""


class DataError(RegbenchError):
    """A dataset is missing or malformed; the message names the files and the directory searched."""


class CompareError(RegbenchError):
    """Nothing to compare, or an option that does not fit the runs; the message says what would."""
