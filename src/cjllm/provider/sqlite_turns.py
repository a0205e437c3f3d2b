"""Writers on one SQLite file taking turns on a side lock, a waiting one polling it briefly.

Before its ``BEGIN IMMEDIATE`` a writer takes an exclusive ``flock`` on the
side file ``<queue>-writer`` and holds it to the ``COMMIT``. A writer that finds the turn
taken tries again after 0.1 ms, then after sleeps doubling up to 1 ms, so it goes on at most
~1 ms after the holder commits. SQLite's own busy handler, which the lock would otherwise
fall back to, polls with sleeps that grow to 100 ms: with the embedded worker in a child
process, the two processes spent more time in those sleeps than in their transactions
(docs/performance.md, issue 15). The side lock is only about waiting; SQLite's lock still
decides who writes (a writer that does not take the side lock, or a file system without
``flock``, is as safe as before), and the kernel drops a dead process's ``flock``.

The wait is bounded, as SQLite's is by its busy timeout: a writer that has not had its turn
within ``timeout`` seconds (the queue gives the turn the same budget as SQLite's busy
timeout) raises ``sqlite3.OperationalError("database is locked …")``, what SQLite raises
when its busy timeout runs out, so the callers handle both alike (the SQLite queue turns it
into ``QueueUnavailable`` with nothing applied, which its callers already handle: the
worker, for one, tries its claim again a second later).
Without the bound a stopped (Ctrl-Z) or hung process holding the turn would stall every
other writer on the file for as long as it stays so, where SQLite alone would fail. The
wait polls (``LOCK_NB``) rather than blocking in the kernel because a blocking ``flock``
cannot be given a timeout in a thread other than the main one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import Iterator

_FIRST_PAUSE = 0.0001  # seconds before the first retry when the turn is taken
_LONGEST_PAUSE = 0.001  # the sleeps between retries double up to this


class WriterTurns:
    """The turns of the writers on the SQLite file at ``path``: :meth:`hold` around each
    write transaction, one at a time per object (the flock belongs to the open file, not to a
    thread: the queue's thread lock keeps its own threads apart). A no-op for an in-memory
    database, or where the side file cannot be opened (SQLite's busy handler then does the
    waiting alone). ``timeout``: seconds a writer waits for its turn before it fails."""

    def __init__(self, path: str, timeout: float) -> None:
        self.path, self.timeout = path, timeout
        self._fd: int | None = None
        if path == ":memory:" or path.startswith("file:"):
            return
        try:
            self._fd = os.open(f"{path}-writer", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            self._fd = None

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """This writer's turn among the processes on the file; ``sqlite3.OperationalError``
        when it did not come within ``timeout`` seconds."""
        fd = self._fd
        if fd is None:
            yield
            return
        self._take(fd)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _take(self, fd: int) -> None:
        deadline = time.monotonic() + self.timeout
        pause = _FIRST_PAUSE
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0.0:
                    raise sqlite3.OperationalError(
                        f"database is locked (no writer turn on {self.path} within "
                        f"{self.timeout:g} s)"
                    ) from None
                time.sleep(min(pause, left))
                pause = min(2.0 * pause, _LONGEST_PAUSE)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
