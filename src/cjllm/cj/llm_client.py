"""The CJ side of the provider HTTP API: one ``POST /api/v1/comparison`` per comparison.

Submissions run at most ``max_concurrency`` at a time. A ``503``/``429``/other ``5xx`` or a
connection error is retried with exponential backoff, honouring ``Retry-After``; a ``4xx``
is final at once. Every submission ends as :class:`Accepted` (the provider queued it and owes
one callback) or :class:`Refused` (it never will; the caller marks the comparison failed).

A retried ``5xx`` or timeout may have been queued already, so the provider can end up with
two requests for one ``correlation_id``; the callback handler applies the first and ignores
the second, so that is harmless.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Self

import httpx

from cjllm.contracts import ComparisonQueuedResponse, ComparisonRequest, utcnow
from cjllm.settings import CJSettings

log = logging.getLogger(__name__)

COMPARISON_PATH = "/api/v1/comparison"
CANCEL_PATH = "/api/v1/comparison/cancel"
_RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
_JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Accepted:
    queue_id: str


@dataclass(frozen=True)
class Refused:
    error_code: str
    message: str


def retry_after_seconds(header: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if header is None:
        return None
    header = header.strip()
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - utcnow()).total_seconds())


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])[:500]
    return str(body)[:500]


class ProviderClient:
    """Submits comparison requests to the LLM Provider Service (retries, bounded concurrency)."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        max_concurrency: int,
        retries: int = 3,
        backoff_seconds: float = 0.5,
        max_backoff_seconds: float = 30.0,
    ) -> None:
        self._http = http
        self._url = http.base_url.join(COMPARISON_PATH)  # absolute: nothing to merge per request
        self._gate = asyncio.Semaphore(max_concurrency)
        self._retries = retries
        self._backoff = backoff_seconds
        self._max_backoff = max_backoff_seconds
        self.requests_sent = 0

    @classmethod
    def from_settings(
        cls, settings: CJSettings, transport: httpx.AsyncBaseTransport | None = None
    ) -> Self:
        """A client for ``settings.provider_url``; pass ``transport`` (e.g. an
        ``httpx.ASGITransport`` over the provider app) to stay in-process."""
        headers = {}
        if settings.provider_api_token:
            headers["Authorization"] = f"Bearer {settings.provider_api_token}"
        http = httpx.AsyncClient(
            base_url=settings.provider_url,
            transport=transport,
            headers=headers,
            timeout=settings.submit_timeout_seconds,
        )
        return cls(
            http,
            max_concurrency=settings.submit_concurrency,
            retries=settings.submit_retries,
            backoff_seconds=settings.submit_backoff_seconds,
            max_backoff_seconds=settings.submit_max_backoff_seconds,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self._max_backoff)
        base: float = min(self._backoff * 2**attempt, self._max_backoff)
        return base * (0.5 + random.random() / 2)

    async def submit(self, request: ComparisonRequest) -> Accepted | Refused:
        """Send one comparison; retry transient failures; never raise for HTTP problems."""
        body = request.model_dump_json(exclude_none=True).encode()
        async with self._gate:
            last = "no attempt made"
            for attempt in range(self._retries + 1):
                retry_after: float | None = None
                try:
                    self.requests_sent += 1
                    response = await self._http.post(self._url, content=body, headers=_JSON)
                except httpx.TransportError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                else:
                    if response.status_code == 202:
                        queued = ComparisonQueuedResponse.model_validate(response.json())
                        return Accepted(str(queued.queue_id))
                    last = f"HTTP {response.status_code}: {_detail(response)}"
                    if response.status_code not in _RETRYABLE_STATUS:
                        return Refused(f"http_{response.status_code}", last)
                    retry_after = retry_after_seconds(response.headers.get("Retry-After"))
                if attempt < self._retries:
                    delay = self._delay(attempt, retry_after)
                    log.warning(
                        "submission of %s failed (%s); retry %d/%d in %.2fs",
                        request.correlation_id,
                        last,
                        attempt + 1,
                        self._retries,
                        delay,
                    )
                    await asyncio.sleep(delay)
            return Refused("submission_failed", f"gave up after {self._retries + 1} tries: {last}")

    async def cancel(self, cj_batch_id: str) -> bool:
        """Ask the provider to cancel a CJ batch's batch-mode comparisons and the jobs left
        with nothing else to answer. False (logged) when the provider could not be told;
        its jobs then run on, and their callbacks are ignored."""
        try:
            response = await self._http.post(CANCEL_PATH, json={"cj_batch_id": cj_batch_id})
        except httpx.TransportError as exc:
            log.warning("could not tell the provider batch %s is cancelled: %s", cj_batch_id, exc)
            return False
        if response.status_code != 200:
            log.warning(
                "the provider refused to cancel batch %s: HTTP %d %s",
                cj_batch_id,
                response.status_code,
                _detail(response),
            )
            return False
        return True
