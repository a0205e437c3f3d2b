"""Checking and planning one comparison: sizes, provider, model, layout, correlation id and
the metadata spine — what :class:`~cjllm.provider.intake.Intake` does before it queues.

A refusal is :class:`Refused` (FastAPI's error shape in ``detail``), raised before anything is
queued. :class:`Derived` remembers, for one group of requests accepted together, what
depends only on what a round's comparisons share (their bundle hints), so it is worked out
once per round instead of once per comparison.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, NoReturn

from fastapi import HTTPException
from pydantic import ValidationError

from cjllm.contracts import (
    SPINE_KEYS,
    BundleHints,
    BundleLayout,
    ComparisonRequest,
    MetadataSpine,
)
from cjllm.provider.adapters import batch_api_for
from cjllm.provider.batch_calls import NoBatchAPI
from cjllm.provider.bundling import PlannedComparison
from cjllm.provider.job_plan import BATCH_STRATEGIES
from cjllm.provider.providers import Providers, ProviderUnavailable
from cjllm.settings import ProviderSettings


class Refused(HTTPException):
    """A comparison not accepted: ``status_code`` and ``detail`` (a list of errors in
    FastAPI's shape, ``{"loc", "msg", "type"[, "ctx"]}``) are the HTTP answer; ``headers``
    carry ``Retry-After`` for a 503."""


def _refuse(status: int, loc: Sequence[str | int], msg: str, kind: str) -> NoReturn:
    raise Refused(status, detail=[{"loc": ["body", *loc], "msg": msg, "type": kind}])


def invalid(exc: ValidationError, prefix: Sequence[str | int] = ()) -> NoReturn:
    """A 422 naming every bad field, in FastAPI's error shape."""
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    detail = [{**e, "loc": ["body", *prefix, *e["loc"]]} for e in errors]
    raise Refused(422, detail=detail)


def check_sizes(comparison: ComparisonRequest, settings: ProviderSettings) -> None:
    limit = settings.max_prompt_chars
    blocks = comparison.prompt_blocks or []
    if len(blocks) > settings.max_blocks:
        _refuse(
            413,
            ["prompt_blocks"],
            f"{len(blocks)} blocks; the limit is {settings.max_blocks} (CJLLM_MAX_BLOCKS)",
            "too_many_blocks",
        )
    fields: list[tuple[list[str | int], int]] = [
        (["prompt_blocks", i, "content"], len(b.content)) for i, b in enumerate(blocks)
    ]
    if comparison.user_prompt is not None:
        fields.append((["user_prompt"], len(comparison.user_prompt)))
    for loc, chars in fields:
        if chars > limit:
            _refuse(
                413,
                loc,
                f"{chars} characters; the limit is {limit} (CJLLM_MAX_PROMPT_CHARS)",
                "prompt_too_large",
            )
    total = sum(chars for _, chars in fields)
    if total > limit:
        _refuse(
            413,
            ["prompt_blocks" if blocks else "user_prompt"],
            f"the prompt is {total} characters in all; the limit is {limit} "
            "(CJLLM_MAX_PROMPT_CHARS)",
            "prompt_too_large",
        )


def plan(
    comparison: ComparisonRequest,
    providers: Providers,
    default_layout: BundleLayout,
    derived: Derived | None = None,
) -> tuple[PlannedComparison, BundleHints]:
    """Resolve provider, model and prompt layout, fix the correlation id, and complete the
    metadata spine (``derived``: what the requests accepted with this one share)."""
    hints = (derived or Derived()).hints(comparison.metadata)
    provider = comparison.llm_config_overrides.provider_override
    try:
        adapter = providers.get(provider)
    except ProviderUnavailable as exc:
        _refuse(400, ["llm_config_overrides", "provider_override"], str(exc), "unknown_provider")
    if hints.batching_strategy in BATCH_STRATEGIES:
        try:
            batch_api_for(adapter)
        except NoBatchAPI as exc:
            _refuse(400, ["metadata", "batching_strategy"], str(exc), "no_batch_api")
    correlation_id = _correlation_id(comparison)
    metadata = dict(comparison.metadata)
    for key in SPINE_KEYS:
        metadata.setdefault(key, None)
    metadata.update(
        request_correlation_id=str(correlation_id),
        prompt_sha256=comparison.prompt_sha256(),
        batching_strategy=hints.batching_strategy.value,
        bundle_id=None,
        bundle_index=None,
        bundle_size=None,
        resolved_provider=None,
        resolved_model=None,
    )
    if not _spine_of_right_types(metadata):
        try:
            MetadataSpine.model_validate(metadata)
        except ValidationError as exc:
            invalid(exc, ["metadata"])
    request = comparison.model_copy(update={"correlation_id": correlation_id, "metadata": metadata})
    model = comparison.llm_config_overrides.model_override or adapter.default_model
    layout = hints.bundle_layout or default_layout
    return PlannedComparison(request, provider, model, layout), hints


_MISSING = object()
_HINT_KEYS = tuple(BundleHints.model_fields)


class Derived:
    """What a group of requests accepted together share, worked out once: the bundle hints
    of each distinct set of hint values (a round's comparisons carry the same ones). Lives
    as long as one call; hints it cannot key (values that are not hashable) are validated
    each time."""

    def __init__(self) -> None:
        self._hints: dict[tuple[Any, ...], BundleHints] = {}
        self.items: dict[tuple[Any, ...], tuple[str, int, int, float]] = {}
        self.held: list[object] = []  # what the ids in ``items`` keys name, kept alive
        """For :class:`~cjllm.provider.intake.Intake`: key, size hint, token budget, TTL."""

    def hints(self, metadata: dict[str, Any]) -> BundleHints:
        """``metadata``'s :class:`BundleHints` (raises :class:`Refused`, 422, if invalid)."""
        values = tuple(metadata.get(k, _MISSING) for k in _HINT_KEYS)
        memo_key = (*values, *map(type, values))  # 1 and True, 1 and 1.0 validate apart
        try:
            known = self._hints.get(memo_key)
        except TypeError:  # an unhashable value: nothing to remember
            memo_key, known = (), None
        if known is not None:
            return known
        try:
            hints = BundleHints.model_validate(metadata)
        except ValidationError as exc:
            invalid(exc, ["metadata"])
        if memo_key:
            self._hints[memo_key] = hints
        return hints


# the spine keys :func:`_plan` sets itself, valid by construction
_SET_BY_PLAN = frozenset(
    {"request_correlation_id", "prompt_sha256", "batching_strategy", "bundle_id"}
    | {"bundle_index", "bundle_size", "resolved_provider", "resolved_model"}
)
_CALLER_KEYS = tuple(k for k in SPINE_KEYS if k not in _SET_BY_PLAN)
_CALLER_KEYS_ARE_TEXT = all(
    MetadataSpine.model_fields[k].annotation == (str | None) for k in _CALLER_KEYS
)


def _spine_of_right_types(metadata: dict[str, Any]) -> bool:
    """True when :class:`MetadataSpine` would accept ``metadata`` as it is (checked without
    pydantic, a tenth of accepting a comparison): the keys :func:`_plan` set are valid, and
    the caller's are plain strings or null (what the CJ service sends). Anything else goes
    to pydantic, for its answer."""
    return _CALLER_KEYS_ARE_TEXT and all(
        type(v) is str or v is None for v in map(metadata.get, _CALLER_KEYS)
    )


def _correlation_id(comparison: ComparisonRequest) -> uuid.UUID:
    """``correlation_id``, else ``metadata.request_correlation_id``, else a new one."""
    given = comparison.metadata.get("request_correlation_id")
    from_metadata: uuid.UUID | None = None
    if given is not None:
        try:
            from_metadata = uuid.UUID(str(given))
        except ValueError:
            _refuse(
                422,
                ["metadata", "request_correlation_id"],
                f"not a UUID: {given!r}",
                "uuid_parsing",
            )
    if comparison.correlation_id is None:
        return from_metadata or uuid.uuid4()
    if from_metadata is not None and from_metadata != comparison.correlation_id:
        _refuse(
            400,
            ["metadata", "request_correlation_id"],
            "differs from correlation_id; they name the same comparison and must agree",
            "correlation_mismatch",
        )
    return comparison.correlation_id
