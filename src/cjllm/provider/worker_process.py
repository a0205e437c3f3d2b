"""The embedded provider worker in a child process: the second core for large rank jobs.

    parent (cjllm rank): CJ service · intake · sweeper · publisher · batch jobs
        │  b"q" on the to-child pipe: something was queued, claim now
        ▼
    child: claim ──> judge ──> settle (finish + outbox, one transaction) ──> ("recorded",)
        │  ("recorded",) / ("status", pacing, bundle sizes) on the to-parent pipe
        ▼
    parent: the publisher drains the outbox now; the run summary reads the child's figures

Both processes open the same SQLite queue file (WAL); the queue and outbox rows stay the
only state a crash or a resume relies on, exactly as with the worker in the parent. The
child is the provider's only caller, so its :class:`~cjllm.provider.limiter.Limiter` is the
one limiter of the job and its :class:`~cjllm.provider.bundle_sizes.BundleSizes` the one
that learns; it reports both to the parent (at most every :data:`STATUS_EVERY` seconds and
when it stops), which adopts the bundle sizes into its own worker's and answers
:meth:`WorkerProcess.pacing` from the last report.

Life and failure:

- the parent starts the child with ``multiprocessing``'s *spawn* (no fork of a running
  event loop) and watches its exit through the process sentinel;
- a clean stop: the parent writes ``b"s"``; the child stops claiming, hands the items of the
  bundles it had in flight back to the queue untouched, reports, exits;
- the parent dies (even by SIGKILL): the to-child pipe reads end-of-file and the child
  stops the same way — no orphan keeps judging;
- the child dies (crash, OOM, SIGKILL): the parent requeues the leases left behind at once
  (as the start-up of a resumed run does; a finished item never finishes twice, because
  ``finish`` only moves items still active) and starts a new child, at most
  :data:`MAX_RESTARTS` times a run; past that :meth:`WorkerProcess.until` raises
  :class:`WorkerProcessFailed` so the job fails with the reason instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import pickle
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from cjllm import collector
from cjllm.provider.bundle_sizes import BundleSizes
from cjllm.provider.calls import LLMAdapter
from cjllm.provider.limiter import Pacing
from cjllm.provider.loops import nap
from cjllm.provider.queue import Queue
from cjllm.settings import ProviderSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_RESTARTS = 3
"""Child deaths a run survives (each one requeues the child's leases and starts another)."""
STATUS_EVERY = 0.25
"""Seconds between the child's reports of its limiter and bundle sizes."""
STOP_GRACE_SECONDS = 10.0
"""How long a stopping child may take to hand its bundles back before it is killed."""
QUEUED = b"q"
STOP = b"s"


class WorkerProcessFailed(RuntimeError):
    """The child worker died more often than :data:`MAX_RESTARTS` allows."""


class WorkerProcess:
    """The parent's handle on the child worker (see the module docstring)."""

    def __init__(
        self,
        settings: ProviderSettings,
        queue: Queue,
        sizes: BundleSizes,
        adapters: Mapping[str, LLMAdapter] | None = None,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.sizes = sizes
        self.adapters = _picklable(adapters)
        self.restarts = 0
        self._pacing = Pacing(False, 0.0, 0.0, {}, None)
        self._requests_before: dict[str, int] = {}  # what children that died had sent
        self._held_before = 0.0
        self._failed: asyncio.Future[None] | None = None
        self._wake_pending = False
        self._to_child: Connection | None = None
        self.pid: int | None = None
        """The running child's process id (None between children)."""
        self.on_recorded: Callable[[], None] = lambda: None
        """Told when the child recorded callbacks in the outbox (the service: wake the
        publisher)."""

    # ------------------------------------------------------------------ what the parent asks

    def notify(self) -> None:
        """Something was queued: wake the child (one byte a loop turn at most)."""
        if self._wake_pending or self._to_child is None:
            return
        self._wake_pending = True
        asyncio.get_running_loop().call_soon(self._send_wake)

    def _send_wake(self) -> None:
        self._wake_pending = False
        self._write(QUEUED)

    def _write(self, command: bytes) -> None:
        conn = self._to_child
        if conn is None:
            return
        with contextlib.suppress(BlockingIOError, BrokenPipeError, OSError):
            # a full pipe already holds a wake-up; a dead child is the sentinel's business
            os.write(conn.fileno(), command)

    def pacing(self) -> Pacing:
        """The limiter's state as the child last reported it (requests of children that
        died included)."""
        last = self._pacing
        requests = dict(self._requests_before)
        for outcome, n in last.requests.items():
            requests[outcome] = requests.get(outcome, 0) + n
        return Pacing(
            last.waiting,
            last.resume_in,
            self._held_before + last.held_back_seconds,
            requests,
            last.finish_in,
            last.out_of_quota,
        )

    async def until(self, work: Awaitable[T]) -> T:
        """``work``'s result, or :class:`WorkerProcessFailed` if the child gave up first."""
        task = asyncio.ensure_future(work)
        failed = self._failed_future()
        watched: set[asyncio.Future[Any]] = {task, failed}
        await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        failed.result()  # raises WorkerProcessFailed
        raise AssertionError("unreachable")

    def _failed_future(self) -> asyncio.Future[None]:
        if self._failed is None:
            self._failed = asyncio.get_running_loop().create_future()
        return self._failed

    # ------------------------------------------------------------------ the supervising loop

    async def run(self, stop: asyncio.Event) -> None:
        """Keep one child working until ``stop`` (a loop for
        :func:`~cjllm.provider.loops.supervise`)."""
        failed = self._failed_future()
        while not stop.is_set() and not failed.done():
            code = await self._one_child(stop)
            if stop.is_set():
                return
            now = time.time()
            recovered = await self.queue.recover_leases(
                now, expired_by=now + self.settings.lease_seconds + 1.0
            )
            self.restarts += 1
            reason = (
                f"the provider worker process exited with code {code}"
                f" ({recovered} comparisons in flight went back to the queue)"
            )
            if self.restarts > MAX_RESTARTS:
                log.error("%s; it died %d times, giving up", reason, self.restarts)
                failed.set_exception(
                    WorkerProcessFailed(
                        f"{reason}; it died {self.restarts} times in this run, so the job "
                        "stops here. Every comparison is still in the queue: run the same "
                        "command again to resume, or set CJLLM_EMBEDDED_WORKER=in_process."
                    )
                )
                return
            log.warning("%s; starting another (restart %d)", reason, self.restarts)
        if failed.done():
            await stop.wait()

    async def _one_child(self, stop: asyncio.Event) -> int | None:
        """Start a child and wait until it exits (``stop`` asks it to); its exit code."""
        ctx = multiprocessing.get_context("spawn")
        to_child_r, to_child_w = ctx.Pipe(duplex=False)
        from_child_r, from_child_w = ctx.Pipe(duplex=False)
        process = ctx.Process(
            target=child_main,
            args=(self.settings, self.adapters, to_child_r, from_child_w),
            name="cjllm provider worker",
            daemon=True,
        )
        # off the event loop: start() writes the pickled adapters (a mock judge's manifest:
        # ~0.8 MB at 10,000 essays) into a pipe the child reads only once its interpreter is
        # up, and the loop has the batch's first round to plan meanwhile
        await asyncio.to_thread(process.start)
        self.pid = process.pid
        to_child_r.close()
        from_child_w.close()
        os.set_blocking(to_child_w.fileno(), False)
        self._to_child = to_child_w
        loop = asyncio.get_running_loop()
        exited = asyncio.Event()
        loop.add_reader(process.sentinel, exited.set)
        loop.add_reader(from_child_r.fileno(), self._read, from_child_r)
        self._write(QUEUED)  # anything already queued: claim it now
        try:
            waiting = asyncio.ensure_future(stop.wait())
            ended = asyncio.ensure_future(exited.wait())
            try:
                await asyncio.wait({waiting, ended}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiting.cancel()
                ended.cancel()
        finally:
            if not exited.is_set():
                self._write(STOP)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(STOP_GRACE_SECONDS):
                        await asyncio.shield(exited.wait())
                if not exited.is_set():
                    log.warning("the provider worker process did not stop; killing it")
                    process.kill()
            await asyncio.to_thread(process.join)
            loop.remove_reader(process.sentinel)
            self._read(from_child_r)  # its last report
            loop.remove_reader(from_child_r.fileno())
            from_child_r.close()
            self._to_child = None
            self.pid = None
            to_child_w.close()
            if process.exitcode not in (0, None):  # the next child starts its tallies anew
                self._retire_pacing()
        return process.exitcode

    def _retire_pacing(self) -> None:
        for outcome, n in self._pacing.requests.items():
            self._requests_before[outcome] = self._requests_before.get(outcome, 0) + n
        self._held_before += self._pacing.held_back_seconds
        self._pacing = Pacing(False, 0.0, 0.0, {}, None)

    def _read(self, conn: Connection) -> None:
        """Take every message the child has written (it never blocks on a whole one)."""
        try:
            while conn.poll():
                message = conn.recv()
                if message[0] == "status":
                    _, pacing, sizes = message
                    self._pacing = pacing
                    self.sizes.adopt(sizes)
                self.on_recorded()
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(conn.fileno())


def _picklable(adapters: Mapping[str, LLMAdapter] | None) -> dict[str, LLMAdapter]:
    """The adapters the child can be handed; the others (an SDK client holds sockets and
    locks) it builds from the settings, as a provider service does."""
    kept: dict[str, LLMAdapter] = {}
    for name, adapter in (adapters or {}).items():
        try:
            pickle.dumps(adapter)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            log.info("the %s adapter is rebuilt in the worker process (%s)", name, exc)
            continue
        kept[name] = adapter
    return kept


# ---------------------------------------------------------------------- the child


def child_main(
    settings: ProviderSettings,
    adapters: dict[str, LLMAdapter],
    from_parent: Connection,
    to_parent: Connection,
) -> None:
    """The child process's entry point (a spawned process: everything comes pickled)."""
    from cjllm.provider.service import event_loop_factory

    # Ctrl-C reaches the whole process group: the parent decides when its worker stops
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING)
    collector.relax()
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(_work(settings, adapters, from_parent, to_parent))


async def _work(
    settings: ProviderSettings,
    adapters: dict[str, LLMAdapter],
    from_parent: Connection,
    to_parent: Connection,
) -> None:
    from cjllm.provider.limiter import Limiter
    from cjllm.provider.loops import supervise
    from cjllm.provider.metrics import ProviderMetrics
    from cjllm.provider.providers import Providers
    from cjllm.provider.queue import queue_from_url
    from cjllm.provider.redis_limits import buckets_for
    from cjllm.provider.service import known_models
    from cjllm.provider.worker import Worker

    queue = queue_from_url(
        settings.queue_url,
        max_items=settings.queue_max_items,
        max_bytes=settings.queue_max_bytes,
        retention_seconds=settings.record_retention_seconds,
    )
    providers = Providers(settings, adapters, store=queue)
    metrics = ProviderMetrics(known_models=known_models(settings))
    limiter = Limiter(settings, metrics, buckets_for(queue, settings.rate_limit_period_seconds))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    report = _Reporter(to_parent, loop)
    worker = Worker(
        queue, providers, settings, metrics, limiter=limiter, on_recorded=report.recorded
    )
    report.worker = worker

    def command() -> None:
        try:
            data = os.read(from_parent.fileno(), 4096)
        except OSError:
            data = b""
        if not data or STOP in data:  # end of file: the parent is gone
            loop.remove_reader(from_parent.fileno())
            stop.set()
        worker.notify()

    loop.add_reader(from_parent.fileno(), command)
    working = asyncio.create_task(supervise("worker", worker.run, stop))
    try:
        while not stop.is_set():
            report.status()
            await nap(stop, STATUS_EVERY)
    finally:
        working.cancel()
        await asyncio.gather(working, return_exceptions=True)
        report.status()
        await providers.aclose()
        await queue.close()
        to_parent.close()


class _Reporter:
    """The child's messages to the parent: ``("recorded",)`` once a loop turn at most, and
    ``("status", pacing, bundle sizes)``."""

    def __init__(self, conn: Connection, loop: asyncio.AbstractEventLoop) -> None:
        self.conn = conn
        self.loop = loop
        self.worker: Any = None
        self._pending = False

    def recorded(self, _recorded: object = ()) -> None:
        if not self._pending:
            self._pending = True
            self.loop.call_soon(self._send_recorded)

    def _send_recorded(self) -> None:
        self._pending = False
        self._send(("recorded",))

    def status(self) -> None:
        worker = self.worker
        self._send(("status", worker.limiter.pacing(), worker.sizes.learned()))

    def _send(self, message: tuple[Any, ...]) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            self.conn.send(message)
