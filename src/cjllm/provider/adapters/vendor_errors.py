"""How a vendor's HTTP failure becomes a :class:`ProviderCallError` (shared by both SDK adapters).

Retryable: 408, 409, 429 (except an exhausted quota), 5xx and Anthropic's 529 overloaded,
timeouts and connection failures; the queue backs off, honouring ``retry-after``. A 429
is ``rate_limited`` and an overload ``overloaded``: the rate limiter pauses the key and the
try costs no attempt (:mod:`cjllm.provider.limiter`).
An account out of credit or over its spend limit (OpenAI ``insufficient_quota``,
``billing_hard_limit_reached``; Anthropic's "credit balance is too low" or "reached your
specified API usage limits") is ``insufficient_quota``: not a rate limit, not retryable.
Not retryable: every other 4xx (400, 401, 402, 403, 404, 413, 422 …); the vendor's own
message, error type and code and the request id are kept in ``details`` so the error
callback says what the provider said. A prompt over the model's context window is a
``context_window_exceeded`` (not retryable as is; the service may split the bundle).
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping
from typing import Any

from cjllm.provider.calls import ProviderCallError
from cjllm.provider.rate_headers import rate_headers

# a local compatible server named by *_BASE_URL usually wants no key at all
PLACEHOLDER_KEY = "sk-no-key-required"


class MissingCredentials(ValueError):
    """No API key, and no base URL of a compatible server that might not need one."""


_NOT_RETRYABLE = {
    400: "bad_request",
    401: "authentication_failed",
    402: "payment_required",
    403: "permission_denied",
    404: "not_found",
    413: "request_too_large",
    422: "bad_request",
}
_CONTEXT_MARKERS = ("prompt is too long", "maximum context length", "context_length_exceeded")
_QUOTA_CODES = ("insufficient_quota", "billing_hard_limit_reached")
_QUOTA_MARKERS = (
    "exceeded your current quota",
    "credit balance is too low",
    "specified api usage limits",
    "spend limit",
    "billing hard limit",
)


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """``retry-after-ms``, else ``retry-after`` as seconds or as an HTTP date; None if absent."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            value = float(millis) / 1000.0
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value >= 0:
            return value
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        parsed = email.utils.parsedate_tz(raw)
        if parsed is None:
            return None
        seconds = email.utils.mktime_tz(parsed) - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def status_error(
    provider: str,
    status: int,
    *,
    message: str,
    headers: Mapping[str, str],
    error_type: str | None = None,
    error_code: str | None = None,
    request_id: str | None = None,
) -> ProviderCallError:
    """Classify one HTTP error response from ``provider``."""
    retry_after = retry_after_seconds(headers)
    details: dict[str, Any] = {
        "provider": provider,
        "status": status,
        "provider_message": message,
        "provider_error_type": error_type,
        "provider_error_code": error_code,
        "request_id": request_id,
    }
    if retry_after is not None:
        details["retry_after"] = retry_after
    lowered = f"{message} {error_code or ''}".lower()
    if status in (400, 402, 403, 429) and (
        error_code in _QUOTA_CODES or any(marker in lowered for marker in _QUOTA_MARKERS)
    ):
        code, retryable = "insufficient_quota", False
    elif status == 429:
        code, retryable = "rate_limited", True
    elif status == 529 or error_type == "overloaded_error":
        code, retryable = "overloaded", True
    elif status >= 500:
        code, retryable = "server_error", True
    elif status in (408, 409):
        code, retryable = ("timeout" if status == 408 else "conflict"), True
    elif status in (400, 413) and any(marker in lowered for marker in _CONTEXT_MARKERS):
        code, retryable = "context_window_exceeded", False
    else:
        code, retryable = _NOT_RETRYABLE.get(status, "client_error"), False
    return ProviderCallError(
        code,
        f"{provider} answered HTTP {status}: {message}",
        retryable=retryable,
        status=status,
        retry_after=retry_after,
        details=details,
        rate_headers=rate_headers(headers),
    )


def transport_error(provider: str, exc: Exception, *, timed_out: bool) -> ProviderCallError:
    """No HTTP answer at all: a timeout or a failed connection (both retryable)."""
    code = "timeout" if timed_out else "connection_error"
    return ProviderCallError(
        code,
        f"{provider}: {exc}",
        retryable=True,
        details={"provider": provider, "exception": type(exc).__name__},
    )
