"""A CJ service on SQLite + MemoryBus talking to a stub provider over an in-process transport."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from threadpoolctl import threadpool_limits

from cjllm.bus import MemoryBus
from cjllm.cj.progress import ProgressEvent
from cjllm.cj.service import cj_service
from cjllm.cj.workflow import CJWorkflow, EssayInput
from cjllm.contracts import CJAssessmentCompletedV1, EventEnvelope
from cjllm.settings import CJSettings
from tests.cj.stub_provider import StubProvider, judge_for

TOPIC = "cj.test.callbacks"


@pytest.fixture(autouse=True)
def single_threaded_blas() -> Iterator[None]:
    """Fits run with one BLAS thread, as the CJ service runs them (``cj_service``): on a busy
    machine a threaded BLAS stalls for milliseconds on every small dense solve."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@dataclass
class Harness:
    settings: CJSettings
    bus: MemoryBus
    stub: StubProvider
    cj: CJWorkflow
    completions: list[EventEnvelope]
    progress: list[ProgressEvent] = field(default_factory=list)

    async def settle(self) -> None:
        """Let the stub's pending publishes and every bus handler finish."""
        while self.stub.tasks or any(
            not g.idle.is_set() for gs in self.bus._groups.values() for g in gs.values()
        ):
            for task in list(self.stub.tasks):
                await task
            await self.bus.drain()

    def completion(self) -> CJAssessmentCompletedV1:
        assert len(self.completions) == 1, self.completions
        return CJAssessmentCompletedV1.model_validate(self.completions[0].data)


MakeHarness = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def make_harness(tmp_path: Path) -> AsyncIterator[MakeHarness]:
    stack = AsyncExitStack()

    async def make(
        *,
        stub: StubProvider | None = None,
        database_url: str | None = None,
        bus: MemoryBus | None = None,
        **overrides: Any,
    ) -> Harness:
        the_bus = bus or MemoryBus(redelivery_delay=0.01)
        the_stub = stub or StubProvider()
        the_stub.bus = the_bus
        values: dict[str, Any] = {
            "database_url": database_url or f"sqlite+aiosqlite:///{tmp_path}/cj.sqlite",
            "provider_url": "http://provider",
            "callback_topic": TOPIC,
            "submit_backoff_seconds": 0.0,
            "submit_retries": 2,
            "split_half_splits": 4,
            # the stub judge is nearly certain, so reliability 0.9 comes within a few rounds:
            # tests that are not about stopping early spend their budget
            "target_reliability": 0.999,
            **overrides,
        }
        settings = CJSettings(**values)
        completions: list[EventEnvelope] = []

        async def keep(envelope: EventEnvelope) -> None:
            completions.append(envelope)

        if bus is None:
            the_bus.subscribe(settings.completion_topic, f"test-{uuid.uuid4()}", keep)
        progress: list[ProgressEvent] = []
        cj = await stack.enter_async_context(
            cj_service(
                settings,
                transport=httpx.ASGITransport(app=the_stub.app()),
                bus=the_bus,
                on_progress=progress.append,
            )
        )
        if bus is None:
            await the_bus.start()
            stack.push_async_callback(the_bus.stop)
        return Harness(settings, the_bus, the_stub, cj, completions, progress)

    yield make
    await stack.aclose()


def essays_with_quality(n: int, seed: int = 1) -> tuple[list[EssayInput], dict[str, float]]:
    """``n`` distinct essays and their hidden qualities (higher is better)."""
    import random

    rng = random.Random(seed)
    essays, qualities = [], {}
    for i in range(n):
        text = f"Essay number {i}. " + " ".join(rng.choice("abcdefgh") * 3 for _ in range(30))
        essays.append(EssayInput(f"e{i:03d}", text))
        qualities[text] = i * 0.5
    return essays, qualities


def judging_stub(qualities: dict[str, float], **kwargs: Any) -> StubProvider:
    return StubProvider(judge=judge_for(qualities), **kwargs)
