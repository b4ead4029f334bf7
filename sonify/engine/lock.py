"""One writer per run folder: an exclusive lock file naming the holder's host and pid.

The lock is an OS file lock (`flock`) on `<run>/.lock`, so it dies with its process; the file's
text says who holds it. A second run on the same folder fails at once in one line; a lock file left
by a process that is gone is taken over, and the run says so.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from sonify.engine.errors import SonifyError

LOCK_NAME = ".lock"


class RunLocked(SonifyError):
    """Another run holds the run folder."""


class RunLock:
    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_NAME
        self.fd: int | None = None
        self.took_over: str | None = None   # the stale holder replaced, if any

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunLocked(f"run folder {self.path.parent} is in use by {holder}; wait for it to finish "
                            f"(one writer per run folder)") from None
        previous = os.pread(fd, 256, 0).decode(errors="replace").strip()
        if previous:
            self.took_over = previous
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{socket.gethostname()} pid {os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)   # an empty file: nobody holds it
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
