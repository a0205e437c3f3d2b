"""Anthropic Message Batches through the official SDK (``client.messages.batches``).

A job is one ``create(requests=[{custom_id, params}])``; each ``params`` is exactly the
``messages.create`` body of a serial call (:meth:`AnthropicAdapter.request_params`), so a
line is a whole bundle with its shared prefix marked for prompt caching. Results come as
JSONL in any order: ``succeeded`` (read by :meth:`AnthropicAdapter.outcome`, priced at the
batch rate), ``errored`` (classified like an HTTP error of that type), ``canceled`` or
``expired``.

Message batches carry no metadata, so :meth:`find` recognises a batch this service created
but did not get to write down by its time and size: created no earlier than the job's first
submission, not known to the job table, holding as many requests as the job had lines. Its
results then say for sure: every ``custom_id`` starts with the job's id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from anthropic.types.messages import MessageBatch

from cjllm.provider.adapters.anthropic import PROVIDER, AnthropicAdapter, sdk_errors
from cjllm.provider.adapters.vendor_errors import status_error
from cjllm.provider.batch_calls import (
    JobLine,
    LineResult,
    LineUnfinished,
    VendorLimits,
    VendorStatus,
)
from cjllm.provider.calls import BundleCall, ProviderCallError

LIMITS = VendorLimits(max_lines=100_000, max_bytes=256 * 1024 * 1024)
LIST_PAGE = 100
# the HTTP status each error type of an errored result stands for
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def _status(batch: MessageBatch) -> VendorStatus:
    counts = batch.request_counts
    return VendorStatus(
        vendor_id=batch.id,
        status=batch.processing_status,
        ended=batch.processing_status == "ended",
        counts={
            "processing": counts.processing,
            "succeeded": counts.succeeded,
            "errored": counts.errored,
            "canceled": counts.canceled,
            "expired": counts.expired,
        },
    )


def _seconds(at: datetime) -> float:
    return at.timestamp()


class AnthropicBatches:
    """:class:`~cjllm.provider.batch_calls.BatchAPI` for Anthropic."""

    provider = PROVIDER
    limits = LIMITS

    def __init__(self, adapter: AnthropicAdapter) -> None:
        self.adapter = adapter
        self.client = adapter.client

    def line(self, custom_id: str, call: BundleCall) -> JobLine:
        params = self.adapter.request_params(call)
        return JobLine(custom_id, {"custom_id": custom_id, "params": params})

    async def submit(self, job_id: str, lines: Sequence[JobLine]) -> str:
        with sdk_errors():
            batch = await self.client.messages.batches.create(
                requests=[line.request for line in lines],  # type: ignore[misc]
                timeout=self.adapter.timeout,
            )
        return batch.id

    async def find(self, job_id: str, n_lines: int, since: float, exclude: set[str]) -> str | None:
        with sdk_errors():
            async for batch in self.client.messages.batches.list(limit=LIST_PAGE):
                if _seconds(batch.created_at) < since:
                    return None  # newest first: the rest are older still
                counts = batch.request_counts
                total = (
                    counts.processing
                    + counts.succeeded
                    + counts.errored
                    + counts.canceled
                    + counts.expired
                )
                if batch.id not in exclude and total == n_lines:
                    return batch.id
        return None

    async def status(self, vendor_id: str) -> VendorStatus:
        with sdk_errors():
            return _status(await self.client.messages.batches.retrieve(vendor_id))

    async def cancel(self, vendor_id: str) -> VendorStatus:
        with sdk_errors():
            return _status(await self.client.messages.batches.cancel(vendor_id))

    async def results(
        self, vendor_id: str, calls: Mapping[str, BundleCall], latency_ms: int
    ) -> dict[str, LineResult]:
        out: dict[str, LineResult] = {}
        with sdk_errors():
            async for entry in await self.client.messages.batches.results(vendor_id):
                call = calls.get(entry.custom_id)
                result = entry.result
                if call is None:
                    out[entry.custom_id] = LineUnfinished("foreign")
                elif result.type == "succeeded":
                    try:
                        out[entry.custom_id] = self.adapter.outcome(
                            call, result.message, latency_ms, batch=True
                        )
                    except ProviderCallError as exc:  # an answer with no usable JSON
                        out[entry.custom_id] = exc
                elif result.type == "errored":
                    error = result.error.error
                    out[entry.custom_id] = status_error(
                        PROVIDER,
                        ERROR_STATUS.get(error.type, 500),
                        message=error.message,
                        headers={},
                        error_type=error.type,
                        request_id=result.error.request_id,
                    )
                else:
                    out[entry.custom_id] = LineUnfinished(result.type)
        return out
