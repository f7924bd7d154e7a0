"""strata's exceptions. Every error from the C++ engine arrives as one of these, with the
engine's full message (what failed, and where: file, offset, rank).

    StrataError                 base of all (a RuntimeError)
    ConfigError                 bad config or argument (also a ValueError)
    CannotFitError              a tier or pool budget cannot hold the state (also a MemoryError)
    StrataIOError               a disk failed: I/O error, no space, corrupt data (also an OSError)
    NotFoundError               a file, key or record does not exist (also a FileNotFoundError)
    PeerError                   another rank failed, timed out or is gone (also a ConnectionError)
    UsageError                  a call in the wrong state, e.g. step() before backward()
    NotImplementedByStrata      a recognised feature strata does not do yet (also NotImplementedError)
"""


class StrataError(RuntimeError):
    """Base class of strata's errors."""


class ConfigError(StrataError, ValueError):
    """Bad input from the caller or the config."""


class CannotFitError(StrataError, MemoryError):
    """A tier or pool budget cannot hold what was asked."""


class StrataIOError(StrataError, OSError):
    """A disk read or write failed, the disk is full, or data on it is corrupt."""


class NotFoundError(StrataError, FileNotFoundError):
    """A file, key or record that does not exist."""


class PeerError(StrataError, ConnectionError):
    """Another rank failed, timed out or is unreachable."""


class UsageError(StrataError):
    """A call that the object's state does not allow."""


class NotImplementedByStrata(StrataError, NotImplementedError):
    """A recognised feature that strata does not implement yet."""


# strata::ErrorCode names (base/status.h) to classes.
_BY_CODE = {
    "invalid_argument": ConfigError,
    "not_found": NotFoundError,
    "out_of_range": ConfigError,
    "io_error": StrataIOError,
    "no_space": StrataIOError,
    "data_loss": StrataIOError,
    "timeout": PeerError,
    "unavailable": PeerError,
    "resource_exhausted": CannotFitError,
    "failed_precondition": UsageError,
    "unimplemented": NotImplementedByStrata,
    "internal": StrataError,
}


def class_for(code: str) -> type:
    """The exception class for a C++ error code's name (used by the extension)."""
    return _BY_CODE.get(code, StrataError)
