"""The OpenAI Batch API through the official SDK (``client.files`` and ``client.batches``).

A job is one JSONL file (``purpose="batch"``) of ``{custom_id, method, url, body}`` lines,
each ``body`` exactly a serial call's (:meth:`OpenAIAdapter.chat_body`, or
:meth:`OpenAIAdapter.completions_body` in prompt-list mode), then one ``batches.create``
with ``completion_window="24h"`` and the job's id in ``metadata`` — which is how
:meth:`find` recognises, after a crash, a batch this service created but did not get to
write down. One model per file (the job table never mixes models in a job).

When the batch ends (``completed``, ``expired``, ``cancelled``), answered lines are in its
output file and errored ones in its error file, in any order: a ``status_code`` of 200 is
read by :meth:`OpenAIAdapter.outcome` (priced at the batch rate), ≥ 400 is classified like
an HTTP error, and an ``error`` of ``batch_expired`` / ``batch_cancelled`` means the line was
never reached. A line in neither file was never reached either.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from openai.types import Batch, Completion
from openai.types.chat import ChatCompletion
from pydantic import ValidationError

from cjllm.provider.adapters.openai import PROVIDER, OpenAIAdapter, sdk_errors
from cjllm.provider.adapters.vendor_errors import status_error
from cjllm.provider.batch_calls import (
    JobLine,
    LineResult,
    LineUnfinished,
    VendorLimits,
    VendorStatus,
)
from cjllm.provider.calls import BundleCall, ProviderCallError
from cjllm.provider.output_modes import OutputMode

LIMITS = VendorLimits(max_lines=50_000, max_bytes=200 * 1024 * 1024)
LIST_PAGE = 100
JOB_METADATA_KEY = "cjllm_job"
ENDED = ("completed", "expired", "cancelled", "failed")
NOT_REACHED = {"batch_expired": "expired", "batch_cancelled": "canceled"}


def _status(batch: Batch) -> VendorStatus:
    counts = batch.request_counts
    failed = None
    if batch.status == "failed":
        errors = batch.errors.data if batch.errors is not None and batch.errors.data else []
        failed = "; ".join(f"{e.code}: {e.message}" for e in errors) or "the batch failed"
    return VendorStatus(
        vendor_id=batch.id,
        status=batch.status,
        ended=batch.status in ENDED,
        counts=(
            {"total": counts.total, "completed": counts.completed, "failed": counts.failed}
            if counts is not None
            else {}
        ),
        failed=failed,
    )


class OpenAIBatches:
    """:class:`~cjllm.provider.batch_calls.BatchAPI` for OpenAI (and compatible servers)."""

    provider = PROVIDER
    limits = LIMITS

    def __init__(self, adapter: OpenAIAdapter) -> None:
        self.adapter = adapter
        self.client = adapter.client
        self.chat = not adapter.prompt_list
        self.endpoint = "/v1/chat/completions" if self.chat else "/v1/completions"

    def line(self, custom_id: str, call: BundleCall) -> JobLine:
        """The serial call's body: on the output-mode rung negotiated for the model if there
        is one (a compatible server), else strict ``json_schema``."""
        if self.chat:
            mode = self.adapter.modes.known(call.model or self.adapter.default_model)
            body = self.adapter.chat_body(call, mode or OutputMode.JSON_SCHEMA)
        else:
            body = self.adapter.completions_body(call)
        request = {"custom_id": custom_id, "method": "POST", "url": self.endpoint, "body": body}
        return JobLine(custom_id, request)

    async def submit(self, job_id: str, lines: Sequence[JobLine]) -> str:
        content = "".join(json.dumps(line.request) + "\n" for line in lines).encode("utf-8")
        timeout = self.adapter.timeout
        with sdk_errors():
            upload = await self.client.files.create(
                file=(f"cjllm-{job_id}.jsonl", content), purpose="batch", timeout=timeout
            )
            batch = await self.client.batches.create(
                input_file_id=upload.id,
                endpoint=self.endpoint,  # type: ignore[arg-type]
                completion_window="24h",
                metadata={JOB_METADATA_KEY: job_id},
                timeout=timeout,
            )
        return batch.id

    async def find(self, job_id: str, n_lines: int, since: float, exclude: set[str]) -> str | None:
        with sdk_errors():
            async for batch in self.client.batches.list(limit=LIST_PAGE):
                if batch.created_at < since - 1:  # created_at is in whole seconds
                    return None  # newest first: the rest are older still
                tag = (batch.metadata or {}).get(JOB_METADATA_KEY)
                if tag == job_id and batch.id not in exclude:
                    return batch.id
        return None

    async def status(self, vendor_id: str) -> VendorStatus:
        with sdk_errors():
            return _status(await self.client.batches.retrieve(vendor_id))

    async def cancel(self, vendor_id: str) -> VendorStatus:
        with sdk_errors():
            return _status(await self.client.batches.cancel(vendor_id))

    async def results(
        self, vendor_id: str, calls: Mapping[str, BundleCall], latency_ms: int
    ) -> dict[str, LineResult]:
        out: dict[str, LineResult] = {}
        with sdk_errors():
            batch = await self.client.batches.retrieve(vendor_id)
            for file_id in (batch.output_file_id, batch.error_file_id):
                if not file_id:
                    continue
                content = await self.client.files.content(file_id)
                for raw in content.text.splitlines():
                    if raw.strip():
                        record = json.loads(raw)
                        custom_id = str(record.get("custom_id"))
                        out[custom_id] = self._read(record, calls.get(custom_id), latency_ms)
        return out

    def _read(self, record: dict[str, Any], call: BundleCall | None, latency_ms: int) -> LineResult:
        if call is None:
            return LineUnfinished("foreign")
        response = record.get("response")
        if not isinstance(response, dict):
            error = record.get("error") or {}
            code = str(error.get("code") or "batch_line_error")
            if code in NOT_REACHED:
                return LineUnfinished(NOT_REACHED[code])
            return ProviderCallError(
                code,
                f"openai batch line failed: {error.get('message')}",
                retryable=True,
                details={"provider": PROVIDER, "provider_error_code": code},
            )
        status = int(response.get("status_code") or 0)
        body = response.get("body") or {}
        if status >= 400 or status == 0:
            error = body.get("error") if isinstance(body, dict) else None
            error = error if isinstance(error, dict) else {}
            return status_error(
                PROVIDER,
                status or 500,
                message=str(error.get("message") or body),
                headers={},
                error_type=error.get("type"),
                error_code=error.get("code"),
                request_id=response.get("request_id"),
            )
        kind = ChatCompletion if self.chat else Completion
        try:
            parsed = kind.model_validate(body)
            return self.adapter.outcome(call, parsed, latency_ms, batch=True)
        except ValidationError as exc:
            return ProviderCallError(
                "malformed_response",
                f"openai batch line body is not a {kind.__name__}: "
                f"{exc.errors(include_url=False)[:1]}",
                retryable=True,
                details={"provider": PROVIDER},
            )
        except ProviderCallError as exc:  # an answer with no usable JSON
            return exc
