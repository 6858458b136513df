"""Exceptions that the CLI turns into a one-line message and a non-zero exit code."""


class MvaeDistError(Exception):
    """Base class of every error the command line reports as one line."""


class ConfigError(MvaeDistError, ValueError):
    """A configuration key or argument has a bad value; the message names the key and the value."""


class DataError(MvaeDistError):
    """A data set, shard, manifest or storage location is missing, corrupt or inconsistent."""
