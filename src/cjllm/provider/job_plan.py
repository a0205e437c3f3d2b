"""How queued batch-mode comparisons become a provider batch job.

- **The batch lane.** A comparison asking for ``async_batch`` or ``nightly_batch`` is queued
  under a *lane key*, ``batch:<mode>:<group>:<compatibility key>``, which the serial claim
  never takes (:data:`LANE_PREFIX`). ``<group>`` is a hash of provider, model and mode:
  one job holds one group's comparisons (one model per job, as OpenAI requires).
- **When a group is ready.** ``async_batch``: once no new comparison has joined it for
  ``batch_linger_seconds`` (a round's requests arrive together), or its oldest has waited
  ``batch_max_wait_seconds``. ``nightly_batch``: once it holds ``nightly_max_items``, or its
  oldest has waited ``nightly_max_age_seconds``, or the daily ``nightly_submit_at`` (UTC)
  has passed since its oldest arrived.
- **Lines.** Within a group, comparisons with equal compatibility keys form lines by the
  serial path's own bundle rule (:func:`cjllm.provider.bundling.pick_bundle`: oldest first,
  each item's size hint — ``batch_items_per_line`` at most — and the input-token budget), so
  a line is the multi-comparison layout of a serial call and pays the shared prefix once.
- **Splitting.** A job takes lines, oldest first, while they fit the vendor's limits
  (lines and bytes, lowered by ``CJLLM_BATCH_MAX_LINES`` / ``_BYTES``); the rest wait for
  the next job, which is formed at once. A line too big for a job on its own is halved; a
  single comparison too big for any job is refused (:attr:`JobDraft.oversize`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cjllm.contracts import BATCH_JOB_STRATEGIES, BatchingStrategy
from cjllm.provider.batch_calls import BatchAPI, JobLine, VendorLimits
from cjllm.provider.bundling import Candidate, PlannedComparison, build_call, pick_bundle
from cjllm.provider.calls import BundleCall
from cjllm.provider.queue import QueuedItem
from cjllm.settings import ProviderSettings

LANE_PREFIX = "batch:"
BATCH_STRATEGIES = BATCH_JOB_STRATEGIES
_MODES = {BatchingStrategy.ASYNC_BATCH: "async", BatchingStrategy.NIGHTLY_BATCH: "nightly"}
_COMPAT_LEN = 64  # a compatibility key is a sha256 hex digest


def lane_key(planned: PlannedComparison, strategy: BatchingStrategy, compat: str) -> str:
    """The queue key of a batch-mode comparison (``compat``: its compatibility key)."""
    mode = _MODES[strategy]
    group = hashlib.sha256(json.dumps([planned.provider, planned.model, mode]).encode())
    return f"{LANE_PREFIX}{mode}:{group.hexdigest()[:16]}:{compat}"


def group_of(key: str) -> str:
    """``batch:<mode>:<group>`` of a lane key."""
    return key[: -(_COMPAT_LEN + 1)]


def mode_of(group: str) -> BatchingStrategy:
    mode = group.split(":")[1]
    return next(s for s, m in _MODES.items() if m == mode)


@dataclass(frozen=True)
class LaneGroup:
    """A group's queued, available comparisons: how many, and their oldest and newest
    enqueue times."""

    group: str
    items: int
    oldest: float
    newest: float


def last_schedule(now: float, at: str) -> float:
    """The latest daily ``HH:MM`` (UTC) at or before ``now``."""
    hour, minute = (int(x) for x in at.split(":"))
    today = datetime.fromtimestamp(now, UTC).replace(hour=hour, minute=minute, second=0)
    moment = today.replace(microsecond=0)
    if moment.timestamp() > now:
        moment -= timedelta(days=1)
    return moment.timestamp()


def is_ready(group: LaneGroup, now: float, settings: ProviderSettings) -> bool:
    """Whether ``group`` should become a job now (the rules are in the module docstring)."""
    if group.items == 0:
        return False
    if mode_of(group.group) is BatchingStrategy.ASYNC_BATCH:
        return (
            now - group.newest >= settings.batch_linger_seconds
            or now - group.oldest >= settings.batch_max_wait_seconds
        )
    if group.items >= settings.nightly_max_items:
        return True
    if now - group.oldest >= settings.nightly_max_age_seconds:
        return True
    at = settings.nightly_submit_at
    return at is not None and group.oldest <= last_schedule(now, at)


# --------------------------------------------------------------------------- forming a job


@dataclass(frozen=True)
class DraftLine:
    """One line of a job about to be recorded: its items (queue ids, in bundle order), the
    bundle, and the line as the vendor will receive it."""

    custom_id: str
    queue_ids: tuple[str, ...]
    call: BundleCall
    line: JobLine


@dataclass
class JobDraft:
    """The lines that fit one job, and the comparisons too big for any job."""

    lines: list[DraftLine] = field(default_factory=list)
    oversize: list[str] = field(default_factory=list)
    bytes: int = 0


def line_id(job_id: str, n: int) -> str:
    """A line's ``custom_id``: the job's id and the line's number (``[A-Za-z0-9_-]``, ≤ 64)."""
    return f"{job_id}-{n}"


def draft_job(
    job_id: str,
    items: Sequence[QueuedItem],
    api: BatchAPI,
    limits: VendorLimits,
    items_per_line: int,
) -> JobDraft:
    """The lines of one job from a group's queued comparisons (any order; oldest go first)."""
    draft = JobDraft()
    plans = {item.queue_id: PlannedComparison.from_json(item.payload) for item in items}
    by_key: dict[str, list[QueuedItem]] = {}
    for item in sorted(items, key=lambda i: (i.enqueued_at, i.queue_id)):
        by_key.setdefault(item.key, []).append(item)
    full = False
    for key_items in by_key.values():
        left = list(key_items)
        while left and not full:
            candidates = [
                Candidate(i.queue_id, min(i.hint, items_per_line), i.tokens, i.budget, 0.0, 0.0)
                for i in left
            ]
            picked = pick_bundle(candidates, math.inf, 0.0)
            line = _fitting_line(job_id, len(draft.lines), picked, plans, api, limits, draft)
            if line is None:
                full = True
                break
            taken = set(line.queue_ids) | set(draft.oversize)
            left = [i for i in left if i.queue_id not in taken]
            if line.queue_ids:
                draft.lines.append(line)
                draft.bytes += line.line.size
                full = len(draft.lines) >= limits.max_lines
        if full:
            break
    return draft


def _fitting_line(
    job_id: str,
    n: int,
    picked: list[str],
    plans: dict[str, PlannedComparison],
    api: BatchAPI,
    limits: VendorLimits,
    draft: JobDraft,
) -> DraftLine | None:
    """The line for ``picked`` (halved until it fits a job on its own), or None when the job
    has no room left for it. A lone comparison too big for any job joins ``draft.oversize``
    and an empty line comes back."""
    custom_id = line_id(job_id, n)
    while True:
        call = build_call(custom_id, [plans[q] for q in picked])
        line = api.line(custom_id, call)
        if line.size <= limits.max_bytes:
            break
        if len(picked) == 1:
            draft.oversize.append(picked[0])
            return DraftLine(custom_id, (), call, line)
        picked = picked[: len(picked) // 2]
    if draft.bytes + line.size > limits.max_bytes:
        return None
    return DraftLine(custom_id, tuple(picked), call, line)
