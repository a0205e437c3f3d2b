"""Reading an OpenAI answer into per-item verdicts: a chat completion, or the choices of a
prompt-list completion, and the usage it reports.

A chat answer is one JSON document for the whole bundle, reconciled against the ids sent
(:func:`cjllm.provider.answers.reconcile_answer`: missing, invalid, duplicate and unknown
ids); a prompt-list answer has one choice per item, matched by ``choices[].index`` and
reconciled on its own, so a malformed or truncated choice affects only its item.
"""

from __future__ import annotations

from typing import Any

from openai.types import Completion
from openai.types.chat import ChatCompletion
from openai.types.completion_usage import CompletionUsage

from cjllm.provider.answers import MalformedOutput, Reconciled, reconcile_answer
from cjllm.provider.calls import BundleCall, CallUsage, ProviderCallError


def usage_of(usage: CompletionUsage | None) -> CallUsage:
    if usage is None:
        return CallUsage()
    details = usage.prompt_tokens_details
    cached = (details.cached_tokens or 0) if details is not None else 0
    written = (details.cache_write_tokens or 0) if details is not None else 0
    return CallUsage(
        input_tokens=max(0, usage.prompt_tokens - cached - written),
        output_tokens=usage.completion_tokens,
        cache_creation_input_tokens=written,
        cache_read_input_tokens=cached,
    )


def _merge(into: Reconciled, part: Reconciled) -> None:
    into.answers.update(part.answers)
    into.missing |= part.missing
    into.invalid.update(part.invalid)
    into.duplicates |= part.duplicates
    into.unknown.extend(part.unknown)
    into.salvaged = into.salvaged or part.salvaged


def read_chat(
    call: BundleCall, response: ChatCompletion, details: dict[str, Any]
) -> tuple[Reconciled, str | None]:
    sent_ids = [item.custom_id for item in call.items]
    if not response.choices:
        raise ProviderCallError(
            "malformed_output", "openai answer has no choices", retryable=True, details=details
        )
    choice = response.choices[0]
    stop: str = choice.finish_reason
    refused: str | None = None
    if choice.message.refusal:
        refused, details["refusal"] = "refusal", choice.message.refusal
    elif stop == "content_filter":
        refused = "content_filter"
    text = choice.message.content or ""
    try:
        reconciled = reconcile_answer(sent_ids, text, truncated=stop == "length", refused=refused)
    except MalformedOutput as exc:
        raise ProviderCallError(
            "malformed_output",
            f"openai answer unusable: {exc}",
            retryable=True,
            details={**details, "stop_reason": stop, "excerpt": text[:300]},
        ) from exc
    return reconciled, stop


def read_completions(call: BundleCall, response: Completion) -> tuple[Reconciled, str | None]:
    """Map ``choices[].index`` back to items; each choice is reconciled on its own, so a
    malformed or truncated answer affects only its item."""
    by_index: dict[int, list[Any]] = {}
    for choice in response.choices:
        by_index.setdefault(choice.index, []).append(choice)
    out = Reconciled()
    for index, item in enumerate(call.items):
        cid = item.custom_id
        choices = by_index.pop(index, [])
        if not choices:
            out.missing.add(cid)
        elif len(choices) > 1:
            out.duplicates.add(cid)
            out.invalid[cid] = "answered more than once"
        else:
            choice = choices[0]
            refused = "content_filter" if choice.finish_reason == "content_filter" else None
            try:
                part = reconcile_answer(
                    [cid],
                    choice.text,
                    truncated=choice.finish_reason == "length",
                    refused=refused,
                )
            except MalformedOutput as exc:
                out.invalid[cid] = f"malformed answer: {exc}"
                continue
            _merge(out, part)
    out.unknown.extend(f"choice#{index}" for index in sorted(by_index))
    reasons = sorted({c.finish_reason for c in response.choices})
    stop = "length" if "length" in reasons else (reasons[0] if len(reasons) == 1 else None)
    return out, stop
