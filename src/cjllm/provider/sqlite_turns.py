"""Writers on one SQLite file taking turns on a side lock, so a waiting one sleeps in the kernel.

Before its ``BEGIN IMMEDIATE`` a writer takes an exclusive ``flock`` on the
side file ``<queue>-writer`` and holds it to the ``COMMIT``, so a process that finds the
write lock taken sleeps in the kernel and wakes the moment the holder commits. SQLite's own
busy handler, which the lock would otherwise fall back to, polls with sleeps that grow to
100 ms: with the embedded worker in a child process, the two processes spent more time in
those sleeps than in their transactions (docs/performance.md, issue 15). The side lock is
only about waiting; SQLite's lock still decides who writes (a writer that does not take
the side lock, or a file system without ``flock``, is as safe as before), and the kernel
drops a dead process's ``flock``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator


class WriterTurns:
    """The turns of the writers on the SQLite file at ``path``: :meth:`hold` around each
    write transaction. A no-op for an in-memory database, or where the side file cannot be
    opened (SQLite's busy handler then does the waiting alone)."""

    def __init__(self, path: str) -> None:
        self._fd: int | None = None
        if path == ":memory:" or path.startswith("file:"):
            return
        try:
            self._fd = os.open(f"{path}-writer", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            self._fd = None

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """This writer's turn among the processes on the file."""
        fd = self._fd
        if fd is None:
            yield
            return
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
