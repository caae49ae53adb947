"""The one atomic file writer: every output file of diffmem goes through `write` (or `write_text`).

A file is written to a hidden temporary beside it and renamed over the target, so a reader (or a
rerun after a kill) sees the old file or the new one, never half of one. Under `jax.distributed`
only process 0 writes shared files; the other processes return the path without writing (they
compute the same values). A failed write (read-only or full disk, permissions) raises
`errors.WriteError` naming the path, and leaves any previous file untouched.
"""
from __future__ import annotations

import os
import socket
import sys
from typing import Callable

from diffmem.errors import WriteError

__all__ = ["is_writer", "write", "write_text"]


def is_writer() -> bool:
    """Whether this process writes shared files: process 0 under jax.distributed (or JAX not in
    use)."""
    if "jax" not in sys.modules:
        return True
    import jax
    return jax.process_index() == 0


def write(path: str, write_to: Callable[[str], None]) -> str:
    """Call `write_to(tmp)` to produce the file at a temporary path, then rename it to `path`.

    The temporary keeps `path`'s extension (np.savez and matplotlib infer the format from it) and
    starts with a dot, so `*.npz`-style listings never see it. Returns `path`.
    """
    if not is_writer():
        return path
    folder, name = os.path.split(os.path.abspath(path))
    root, ext = os.path.splitext(name)
    tmp = os.path.join(folder, f".{root}.tmp-{socket.gethostname()}-{os.getpid()}{ext}")
    try:
        os.makedirs(folder, exist_ok=True)
        write_to(tmp)
        os.replace(tmp, path)
    except OSError as e:
        _remove_quietly(tmp)
        raise WriteError(
            f"Cannot write {path}: {e.strerror or e} (errno {e.errno}). Check that the directory "
            "is writable and the disk has space, or choose another output directory; nothing "
            "was changed at that path."
        ) from e
    except BaseException:
        _remove_quietly(tmp)
        raise
    return path


def write_text(path: str, text: str) -> str:
    """Write `text` (UTF-8) to `path` atomically."""
    def to(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    return write(path, to)


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass
