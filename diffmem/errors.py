"""diffmem's own error classes: what `diffmem.cli.run` turns into a one-line `error: ...` exit.

Anything else (a bare ValueError, KeyError, ...) is a bug and keeps its traceback. Raise the class
that says what went wrong, with a message that names the file or value and what to do about it. Each
class also derives from the matching builtin, so `except ValueError` / `except FileNotFoundError`
still work.
"""
from __future__ import annotations

__all__ = ["DiffmemError", "ConfigError", "InputError", "MissingInputError", "OutputExistsError",
           "WriteError", "WorkdirBusyError"]


class DiffmemError(Exception):
    """Base of every error diffmem reports to a user as a message rather than a traceback."""


class ConfigError(DiffmemError, ValueError):
    """A config key or value a user gave is not valid; the message says what is
    (`diffmem.configlib`, `diffmem.config_schema`)."""


class InputError(DiffmemError, ValueError):
    """A bad argument or unreadable input file (corrupt .npz / JSON, wrong shape, out-of-range
    value)."""


class MissingInputError(DiffmemError, FileNotFoundError):
    """A file or directory a stage needs does not exist (e.g. a workdir that was never trained)."""


class OutputExistsError(DiffmemError, FileExistsError):
    """A finished output differs from what would be written; it is never overwritten silently."""


class WriteError(DiffmemError, OSError):
    """Writing an output failed (read-only file system, disk full, permissions); names the path."""


class WorkdirBusyError(DiffmemError):
    """Another live process is writing the same workdir (see `diffmem.lock`)."""
