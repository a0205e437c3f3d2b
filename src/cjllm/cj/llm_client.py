"""The CJ side of the provider API: one request per comparison, over HTTP or in-process.

Distributed, each comparison is one ``POST /api/v1/comparison``. Embedded (``cjllm rank``),
the client is given :class:`Direct` — the provider's own acceptance step as a function
(:meth:`cjllm.provider.intake.Intake.accept`, wired by :mod:`cjllm.embedded`) — and hands
it each request model without serialising it: the same decision, the same answers (202 or
the API's status), without the HTTP round trip.

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
from collections.abc import Awaitable, Callable, Sequence
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
HAND_OVER = 500
"""Comparisons per in-process hand-over (:meth:`ProviderClient.submit_many`): one group
commit step (:data:`cjllm.provider.group_commit.MAX_GROUP`)."""


@dataclass(frozen=True)
class Accepted:
    queue_id: str


@dataclass(frozen=True)
class Refused:
    error_code: str
    message: str


@dataclass(frozen=True)
class Reply:
    """The provider's answer to one comparison: ``status`` 202 with its ``queue_id``, or
    the status the HTTP API answers with, its error text and ``Retry-After`` seconds."""

    status: int
    queue_id: str | None = None
    detail: str = ""
    retry_after: float | None = None


@dataclass(frozen=True)
class Direct:
    """The provider reached in-process: ``submit`` queues one comparison (a :class:`Reply`,
    never an exception for a refusal); ``cancel`` cancels a CJ batch's batch-mode work
    (False, logged, when the provider could not be told), as :meth:`ProviderClient.cancel`;
    ``submit_many``, if given, queues a group of comparisons with one call."""

    submit: Callable[[ComparisonRequest], Awaitable[Reply]]
    cancel: Callable[[str], Awaitable[bool]]
    submit_many: Callable[[Sequence[ComparisonRequest]], Awaitable[list[Reply]]] | None = None
    """Queues several comparisons in one hand-over, each answered as ``submit`` would."""


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
    """Submits comparison requests to the LLM Provider Service (retries, bounded
    concurrency): over ``http``, or in-process through ``direct``."""

    def __init__(
        self,
        http: httpx.AsyncClient | None,
        *,
        max_concurrency: int,
        retries: int = 3,
        backoff_seconds: float = 0.5,
        max_backoff_seconds: float = 30.0,
        direct: Direct | None = None,
    ) -> None:
        if (http is None) == (direct is None):
            raise ValueError("a provider client needs either an HTTP client or a direct hop")
        self._http = http
        self._direct = direct
        self._url = http.base_url.join(COMPARISON_PATH) if http is not None else None
        self._gate = asyncio.Semaphore(max_concurrency)
        self._retries = retries
        self._backoff = backoff_seconds
        self._max_backoff = max_backoff_seconds
        self.requests_sent = 0

    @classmethod
    def from_settings(
        cls,
        settings: CJSettings,
        transport: httpx.AsyncBaseTransport | None = None,
        direct: Direct | None = None,
    ) -> Self:
        """A client for ``settings.provider_url`` (through ``transport`` if given, e.g. an
        ``httpx.ASGITransport`` over the provider app), or for the in-process ``direct``
        provider."""
        http = None
        if direct is None:
            token = settings.provider_api_token
            http = httpx.AsyncClient(
                base_url=settings.provider_url,
                transport=transport,
                headers={"Authorization": f"Bearer {token}"} if token else {},
                timeout=settings.submit_timeout_seconds,
            )
        return cls(
            http,
            max_concurrency=settings.submit_concurrency,
            retries=settings.submit_retries,
            backoff_seconds=settings.submit_backoff_seconds,
            max_backoff_seconds=settings.submit_max_backoff_seconds,
            direct=direct,
        )

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self._max_backoff)
        base: float = min(self._backoff * 2**attempt, self._max_backoff)
        return base * (0.5 + random.random() / 2)

    async def submit(self, request: ComparisonRequest) -> Accepted | Refused:
        """Send one comparison; retry transient failures; never raise for HTTP problems."""
        return await self._submit(request, None)

    async def submit_many(self, requests: Sequence[ComparisonRequest]) -> list[Accepted | Refused]:
        """Send each comparison as :meth:`submit` would, answers in order. In process (a
        :class:`Direct` with ``submit_many``) each comparison's first try is part of one
        hand-over of up to :data:`HAND_OVER` comparisons (two hand-overs in flight, so one
        is planned while the queue writes the other); a comparison answered with a status
        worth retrying goes on alone through :meth:`submit`'s retries from there."""
        direct = self._direct
        if direct is None or direct.submit_many is None:
            return list(await asyncio.gather(*(self.submit(r) for r in requests)))
        submit_many, in_flight = direct.submit_many, asyncio.Semaphore(2)

        async def hand_over(group: Sequence[ComparisonRequest]) -> list[Accepted | Refused]:
            async with in_flight:
                self.requests_sent += len(group)
                replies = await submit_many(group)
            answers: list[Accepted | Refused | None] = [
                Accepted(y.queue_id) if y.status == 202 and y.queue_id is not None else None
                for y in replies
            ]
            again = [n for n, answer in enumerate(answers) if answer is None]
            retried = await asyncio.gather(*(self._submit(group[n], replies[n]) for n in again))
            for n, answer in zip(again, retried, strict=True):
                answers[n] = answer
            return [answer for answer in answers if answer is not None]

        groups = [requests[k : k + HAND_OVER] for k in range(0, len(requests), HAND_OVER)]
        answers = await asyncio.gather(*(hand_over(g) for g in groups))
        return [answer for group in answers for answer in group]

    async def _submit(self, request: ComparisonRequest, first: Reply | None) -> Accepted | Refused:
        """:meth:`submit`, its first try's reply ``first`` when already sent."""
        body = (
            b"" if self._direct is not None else request.model_dump_json(exclude_none=True).encode()
        )
        async with self._gate:
            last = "no attempt made"
            for attempt in range(self._retries + 1):
                if attempt == 0 and first is not None:
                    reply = first
                else:
                    self.requests_sent += 1
                    reply = await self._send(request, body)
                if reply.status == 202 and reply.queue_id is not None:
                    return Accepted(reply.queue_id)
                last = reply.detail if reply.status == 0 else f"HTTP {reply.status}: {reply.detail}"
                if reply.status and reply.status not in _RETRYABLE_STATUS:
                    return Refused(f"http_{reply.status}", last)
                if attempt < self._retries:
                    delay = self._delay(attempt, reply.retry_after)
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

    async def _send(self, request: ComparisonRequest, body: bytes) -> Reply:
        """One attempt; status 0 is a transport failure (nothing answered)."""
        if self._direct is not None:
            return await self._direct.submit(request)
        assert self._http is not None and self._url is not None
        try:
            response = await self._http.post(self._url, content=body, headers=_JSON)
        except httpx.TransportError as exc:
            return Reply(0, detail=f"{type(exc).__name__}: {exc}")
        if response.status_code == 202:
            queued = ComparisonQueuedResponse.model_validate(response.json())
            return Reply(202, queue_id=str(queued.queue_id))
        return Reply(
            response.status_code,
            detail=_detail(response),
            retry_after=retry_after_seconds(response.headers.get("Retry-After")),
        )

    async def cancel(self, cj_batch_id: str) -> bool:
        """Ask the provider to cancel a CJ batch's batch-mode comparisons and the jobs left
        with nothing else to answer. False (logged) when the provider could not be told;
        its jobs then run on, and their callbacks are ignored."""
        if self._direct is not None:
            return await self._direct.cancel(cj_batch_id)
        assert self._http is not None
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
