"""User-facing errors: one line that names the problem, never a bare traceback."""


class SemisupError(Exception):
    """An error caused by user input (config, URI, credentials, data).

    The CLI prints ``str(err)`` on one line and exits with status 2.
    """


class ConfigError(SemisupError):
    """A config file or override is invalid; the message names the field."""


class StorageError(SemisupError):
    """A URI cannot be read or written (missing object, bucket, credentials)."""


class DataError(SemisupError):
    """A dataset is malformed: corrupt image, empty shard, class mismatch."""
