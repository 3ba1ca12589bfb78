"""Errors the package raises on bad input; the command line prints them without a traceback."""


class CmiError(Exception):
    """Base class: a problem the user can fix, described in one message."""


class ConfigError(CmiError, ValueError):
    """A profile or override names an unknown field, has a wrong type or an invalid value."""


class DatasetUnavailable(CmiError, RuntimeError):
    """A dataset is neither on disk nor downloadable, or its files are corrupt."""


class TrainingDiverged(CmiError, RuntimeError):
    """The training loss became NaN or infinite."""


class CacheCorrupt(CmiError, RuntimeError):
    """A cached file cannot be read back (truncated, edited, or from another program)."""


class WriteFailed(CmiError, OSError):
    """A file could not be written: no space left, a read-only or unwritable folder."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with where the run stopped (the command line prints it in one line: what is cached is kept,
    and the same command resumes)."""
