"""A provider that dies at the worst moments of a batch job's life, and the one that follows.

Each test stops the first service exactly where a crash would (after recording a job and
before submitting it; after the vendor accepted it and before its id was written down),
without the clean shutdown's courtesies, then starts a second service on the same queue:
the job is picked up, nothing is submitted twice, and every comparison gets one callback.
Killing real processes while jobs are open is the distributed end-to-end test's part.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anthropic
import pytest

from cjllm.provider.batch_calls import BatchAPI, JobLine, LineResult, VendorLimits, VendorStatus
from cjllm.provider.calls import BundleCall
from cjllm.provider.jobs import JobState
from cjllm.provider.service import ProviderService
from cjllm.settings import ProviderSettings
from tests.provider.batch_support import (
    batch_body,
    batch_provider,
    batch_settings,
    jobs_of,
    new_topic,
    settled,
    wait_jobs,
)
from tests.provider.support import Callbacks, eventually, post_all
from tests.sim.conftest import sim, sim_server, vendor_env
from tests.sim.running import SimControl

__all__ = ["sim", "sim_server", "vendor_env"]


class ProcessDied(BaseException):
    """Stands for the process ending on the spot (nothing after it runs)."""


@dataclass
class DiesAroundSubmit:
    """The vendor's real batch API, except that the process dies before (``reach=False``)
    or right after (``reach=True``) the vendor accepts the job."""

    api: BatchAPI
    reach: bool

    @property
    def provider(self) -> str:
        return self.api.provider

    @property
    def limits(self) -> VendorLimits:
        return self.api.limits

    def line(self, custom_id: str, call: BundleCall) -> JobLine:
        return self.api.line(custom_id, call)

    async def submit(self, job_id: str, lines: Sequence[JobLine]) -> str:
        if self.reach:
            await self.api.submit(job_id, lines)
        raise ProcessDied

    async def find(self, job_id: str, n_lines: int, since: float, exclude: set[str]) -> str | None:
        return await self.api.find(job_id, n_lines, since, exclude)

    async def status(self, vendor_id: str) -> VendorStatus:
        return await self.api.status(vendor_id)

    async def results(
        self, vendor_id: str, calls: Mapping[str, BundleCall], latency_ms: int
    ) -> dict[str, LineResult]:
        return await self.api.results(vendor_id, calls, latency_ms)

    async def cancel(self, vendor_id: str) -> VendorStatus:
        return await self.api.cancel(vendor_id)


@pytest.fixture(params=["anthropic", "openai"])
def vendor(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def restart_settings(queue_url: str) -> ProviderSettings:
    # short job claims, so a dead process's claim lapses quickly (distributed shape)
    return batch_settings(queue_url, lease_seconds=0.5, call_timeout_seconds=1.0)


async def record_only(service: ProviderService) -> list[str]:
    """Record a job for every ready group, as the loop would, and submit none."""
    made = []
    for group in await service.jobs.table.lane_groups(time.time()):
        recorded = await service.jobs.record(group.group, time.time())
        assert recorded is not None
        made.append(recorded.job.job_id)
    return made


async def restart(settings: ProviderSettings, embedded: bool, service: ProviderService) -> None:
    """What a new process does about the dead one's claims: the embedded shape (it holds
    the folder lock) takes them back at once; elsewhere they lapse."""
    if embedded:
        await service.jobs.table.release_leases()
    service.start_work()


async def test_a_job_recorded_but_never_submitted_is_submitted_once_after_a_restart(
    vendor: str, backend_url: str, vendor_env: SimControl
) -> None:
    settings = restart_settings(backend_url)
    topic, callbacks = new_topic(), Callbacks()
    bodies = [batch_body(i, topic=topic, vendor=vendor) for i in range(20)]
    async with batch_provider(settings, callbacks, topic) as (first, http):
        await post_all(http, bodies)
        (job_id,) = await record_only(first)
    assert vendor_env.counters()["batches"]["created"] == 0

    async with batch_provider(settings, callbacks, topic) as (second, _):
        await restart(settings, backend_url.startswith("sqlite"), second)
        await eventually(lambda: callbacks.count >= 20)
        (job,) = await wait_jobs(second, settled)

    assert job.job_id == job_id and not job.adopted
    assert vendor_env.counters()["batches"]["created"] == 1
    assert all(callbacks.one(b["correlation_id"]).is_success for b in bodies)


async def test_a_job_the_vendor_accepted_before_a_crash_is_found_not_sent_again(
    vendor: str, tmp_path: Any, vendor_env: SimControl
) -> None:
    settings = restart_settings(f"sqlite:///{tmp_path / 'q.sqlite'}")
    topic, callbacks = new_topic(), Callbacks()
    bodies = [batch_body(i, topic=topic, vendor=vendor) for i in range(20)]
    async with batch_provider(settings, callbacks, topic) as (first, http):
        await post_all(http, bodies)
        (group,) = await first.jobs.table.lane_groups(time.time())
        recorded = await first.jobs.record(group.group, time.time())
        assert recorded is not None
        dying = DiesAroundSubmit(recorded.api, reach=True)
        with pytest.raises(ProcessDied):
            await first.jobs.submit(recorded.job, dying, recorded.lines)
        (job,) = await jobs_of(first)
        assert job.state is JobState.RECORDED and job.attempted_at is not None
    assert vendor_env.counters()["batches"]["created"] == 1

    async with batch_provider(settings, callbacks, topic) as (second, _):
        await restart(settings, True, second)
        await eventually(lambda: callbacks.count >= 20)
        (job,) = await wait_jobs(second, settled)

    assert job.adopted and job.vendor_status in ("ended", "completed")
    assert vendor_env.counters()["batches"]["created"] == 1  # found, not sent again
    assert all(callbacks.one(b["correlation_id"]).is_success for b in bodies)


async def test_a_vendor_job_wrongly_taken_for_ours_is_let_go_and_ours_submitted(
    tmp_path: Any, vendor_env: SimControl
) -> None:
    """Message batches carry no metadata, so a stranger's batch of the same size created
    in the window looks like ours until its results show other custom_ids."""
    settings = restart_settings(f"sqlite:///{tmp_path / 'q.sqlite'}")
    topic, callbacks = new_topic(), Callbacks()
    bodies = [batch_body(i, topic=topic, vendor="anthropic", size=10) for i in range(10)]
    async with batch_provider(settings, callbacks, topic) as (first, http):
        await post_all(http, bodies)
        (group,) = await first.jobs.table.lane_groups(time.time())
        recorded = await first.jobs.record(group.group, time.time())
        assert recorded is not None
        with pytest.raises(ProcessDied):  # dies before the job reached the vendor
            await first.jobs.submit(
                recorded.job, DiesAroundSubmit(recorded.api, False), recorded.lines
            )
        stranger = anthropic.AsyncAnthropic(max_retries=0)
        other = await stranger.messages.batches.create(
            requests=[{"custom_id": "someone-else", "params": recorded.lines[0].request["params"]}]
        )
        await stranger.close()

    async with batch_provider(settings, callbacks, topic) as (second, _):
        await restart(settings, True, second)
        await eventually(lambda: callbacks.count >= 10)
        (job,) = await wait_jobs(second, settled)

    assert other.id in job.excluded and job.vendor_id != other.id and not job.adopted
    assert vendor_env.counters()["batches"]["created"] == 2  # the stranger's and ours
    assert all(callbacks.one(b["correlation_id"]).is_success for b in bodies)
    assert {len(rs) for rs in callbacks.by_id.values()} == {1}
