"""Exceptions that the CLI turns into a one-line message and a non-zero exit code."""


class MvaeDistError(Exception):
    """Base class of every error the command line reports as one line."""


class ConfigError(MvaeDistError, ValueError):
    """A configuration key or argument has a bad value; the message names the key and the value."""


class DataError(MvaeDistError):
    """A data set, shard, manifest or storage location is missing, corrupt or inconsistent."""


class StorageUnavailable(MvaeDistError):
    """The object store kept failing with transient errors (throttling, 5xx, refused or dropped
    connections) through every retry. Not a DataError: the data may be fine, so Ray Train restarts
    the worker group on it (``train.max_failures``) instead of stopping the run."""


def one_line(exc: BaseException, *, last: bool = False) -> str:
    """An exception's message as one line: its first non-empty line (``last``: its last, e.g. the
    ``Error: ...`` line closing a traceback that Ray put into the message); the type's name if
    the message is empty."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    return lines[-1] if last else lines[0]
