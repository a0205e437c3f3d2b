"""What a provider batch job is made of, and what the vendor gives back for it.

A job is N *lines*. Each line is one bundle — the serial path's multi-comparison layout
(:func:`cjllm.provider.bundling.build_call`, rendered by the adapter) — under its own
``custom_id``. A :class:`BatchAPI`, one per vendor (``adapters/anthropic_batches.py``,
``adapters/openai_batches.py``), submits the lines as one vendor job, finds a job it may
already have submitted (after a crash between submitting and writing the vendor's id down),
reports a job's status, reads its results line by line (they come in any order), and
cancels a job. Every result line becomes one of:

- a :class:`~cjllm.provider.calls.CallOutcome`: the line was answered; its items are
  reconciled exactly as a serial call's are, and it is priced at the batch rate;
- a :class:`~cjllm.provider.calls.ProviderCallError`: the line errored (Anthropic
  ``errored``, an OpenAI line with ``status_code`` ≥ 400 or in the error file); its
  ``retryable`` says whether its items go again;
- :class:`LineUnfinished`: the vendor never reached the line (the job expired or was
  cancelled first).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cjllm.provider.calls import BundleCall, CallOutcome, ProviderCallError


@dataclass(frozen=True)
class VendorLimits:
    """The most one vendor job may hold: lines, and bytes of the request or input file."""

    max_lines: int
    max_bytes: int

    def capped(self, max_lines: int | None, max_bytes: int | None) -> VendorLimits:
        """These limits, lowered by the configured ones (``CJLLM_BATCH_MAX_LINES`` / ``_BYTES``)."""
        return VendorLimits(
            min(self.max_lines, max_lines or self.max_lines),
            min(self.max_bytes, max_bytes or self.max_bytes),
        )


@dataclass(frozen=True)
class JobLine:
    """One line as the vendor will receive it: its ``custom_id`` and request object."""

    custom_id: str
    request: dict[str, Any]

    @property
    def size(self) -> int:
        """Bytes this line adds to the job (its JSON, and a separator)."""
        return len(json.dumps(self.request).encode("utf-8")) + 1


@dataclass(frozen=True)
class VendorStatus:
    """A vendor job as of one look. ``status`` is the vendor's own word (``in_progress``,
    ``canceling``, ``ended``; ``validating``, ``finalizing``, ``completed``, ``expired``,
    ``cancelling``, ``cancelled``, ``failed``). ``ended``: results can be read now.
    ``failed``: the whole job was refused (the reason), so no line has a result."""

    vendor_id: str
    status: str
    ended: bool
    counts: dict[str, int] = field(default_factory=dict)
    failed: str | None = None


@dataclass(frozen=True)
class LineUnfinished:
    """The vendor never reached this line: ``reason`` is ``expired`` or ``canceled``."""

    reason: str


LineResult = CallOutcome | ProviderCallError | LineUnfinished


class BatchAPI(Protocol):
    """One vendor's batch endpoints, through its official SDK. Methods raise
    :class:`ProviderCallError` for a failed HTTP call (classified like a serial call's)."""

    provider: str
    limits: VendorLimits

    def line(self, custom_id: str, call: BundleCall) -> JobLine:
        """Render one bundle as a job line (the same body a serial call would send)."""
        ...

    async def submit(self, job_id: str, lines: Sequence[JobLine]) -> str:
        """Create the vendor job; returns the vendor's id for it."""
        ...

    async def find(self, job_id: str, n_lines: int, since: float, exclude: set[str]) -> str | None:
        """The id of a vendor job this service submitted for ``job_id`` on or after ``since``
        (UNIX seconds) with ``n_lines`` lines, if there is one; ``exclude`` lists ids
        already accounted for."""
        ...

    async def status(self, vendor_id: str) -> VendorStatus: ...

    async def results(
        self, vendor_id: str, calls: Mapping[str, BundleCall], latency_ms: int
    ) -> dict[str, LineResult]:
        """Every result line of an ended job, by ``custom_id``. ``calls`` are the bundles
        sent (for reconciling each answer); lines the vendor does not mention are absent.
        A ``custom_id`` not in ``calls`` is kept as an :class:`LineUnfinished` of reason
        ``foreign`` (the job was not this service's)."""
        ...

    async def cancel(self, vendor_id: str) -> VendorStatus: ...


class NoBatchAPI(Exception):
    """The provider has no batch API (the mock judge; an adapter for a server without one)."""

    def __init__(self, provider: str) -> None:
        super().__init__(
            f"provider {provider!r} has no batch API: async_batch and nightly_batch need "
            "anthropic (Message Batches) or openai (Batch API)"
        )
        self.provider = provider
