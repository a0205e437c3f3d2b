"""Long-running loops: keep one alive, and sleep in a way that a stop or a wake-up cuts short."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


async def supervise(
    name: str, loop: Callable[[asyncio.Event], Awaitable[None]], stop: asyncio.Event
) -> None:
    """Run ``loop(stop)`` until ``stop`` is set; a loop that fails is logged and restarted.

    Every loop also checks ``stop`` itself rather than relying on being cancelled: on Python
    3.11 ``asyncio.wait_for`` (which redis-py uses for socket timeouts) can swallow a
    cancellation that lands as its inner await completes, and a loop would then run for ever.
    """
    while not stop.is_set():
        try:
            await loop(stop)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed; restarting it in 1s", name)
            await nap(stop, 1.0)


async def nap(wakeup: asyncio.Event, seconds: float) -> None:
    """Sleep until ``wakeup`` is set or ``seconds`` pass (``asyncio.timeout``, not
    ``wait_for``, for the reason given in :func:`supervise`)."""
    try:
        async with asyncio.timeout(seconds):
            await wakeup.wait()
    except TimeoutError:
        pass
