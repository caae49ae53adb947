"""One training writes a workdir at a time: an advisory lock on `<workdir>/.diffmem.lock`
(`diffmem.layout.Layout.lock_path`).

The lock is `fcntl.flock` on that file, which the kernel drops when its holder exits in any way
(SIGKILL included): a lock file left by a dead process is stale by construction and the next run
simply takes it (its holder's pid and host are only read for the error message). The file itself is
never deleted (deleting a flock file lets two processes lock two different files). Under
jax.distributed process 0 takes the lock and every process learns the outcome, so either all of them
run or all stop.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
import warnings

from diffmem import atomic
from diffmem.errors import WorkdirBusyError, WriteError
from diffmem.layout import LOCK_NAME, Layout  # noqa: F401 (LOCK_NAME: its name in a workdir)

__all__ = ["workdir_lock"]


@contextlib.contextmanager
def workdir_lock(workdir: str, what: str = "training"):
    """Hold `workdir`'s writer lock for the duration of the block; raises `WorkdirBusyError` at once
    when another live process holds it (never waits)."""
    from diffmem import multihost  # imports JAX, which importing this module does not
    fd, failure = None, None
    if atomic.is_writer():
        try:
            fd = _acquire(workdir, what)
        except (WorkdirBusyError, WriteError) as e:
            failure = e
    message = _shared_outcome(None if failure is None else str(failure), multihost)
    if failure is not None:
        raise failure
    if message:  # process 0 could not lock: the others stop with it
        raise WorkdirBusyError(message)
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the flock


def _acquire(workdir: str, what: str) -> int | None:
    path = Layout(workdir).lock_path
    try:
        os.makedirs(workdir, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise WriteError(
            f"Cannot create the lock file {path}: {e.strerror or e} (errno {e.errno}); check that "
            f"{workdir} is writable and the disk has space, or choose another --workdir."
        ) from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = _read_holder(fd)
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise WorkdirBusyError(
                f"{workdir} is being written by another run ({holder}); two writers would mix "
                f"their "
                f"checkpoints and metrics, so this {what} stops. Wait for that run to finish (or "
                f"stop it), "
                "or use another --workdir."
            ) from None
        warnings.warn(
            f"Cannot lock {path} ({e.strerror}; this file system has no flock): make sure only one "
            f"run writes {workdir} at a time."
        )
        return None
    info = {"pid": os.getpid(), "host": socket.gethostname(), "what": what,
            "since": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    return fd


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"{info['what']} pid {info['pid']} on host {info['host']}, since {info['since']}"
    except (OSError, ValueError, KeyError):
        return "holder unknown"


def _shared_outcome(busy: str | None, multihost) -> str | None:
    """Process 0's outcome on every process (a collective under jax.distributed)."""
    import jax
    if jax.process_count() == 1:
        return busy
    import numpy as np
    message = np.zeros(1024, np.uint8)
    if busy:
        raw = busy.encode()[:1024]
        message[: len(raw)] = np.frombuffer(raw, np.uint8)
    out = np.asarray(multihost.broadcast_from_main(message))
    return bytes(out[out > 0].astype(np.uint8)).decode(errors="replace") or None
