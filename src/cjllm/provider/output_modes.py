"""Structured-output negotiation with OpenAI-compatible servers.

Each server accepts its own dialect of ``response_format``. The ladder, best first::

    json_schema ──refused──> json_object_schema ──refused──> json_object ──refused──> text
    (strict schema)          (json_object + "schema",         (any JSON; the    (no response_format;
                              llama-cpp-python's grammar)      schema in the     the schema in the
                                                               prompt)           prompt)

- A **refusal** is an HTTP 400 or 422 that names ``response_format``, or a 500 whose body
  names it (llama-cpp-python answers a ``json_schema`` it cannot take with a 500). The call
  moves down one rung at once and is sent again: it costs no attempt and no backoff.
- The rung that works is **remembered** per (base URL, model): in the process, and in the
  queue's store (:meth:`cjllm.provider.queue.Queue.remember`), so every worker on the queue
  starts on it instead of being refused again.
- ``CJLLM_OPENAI_OUTPUT_MODE`` **forces** a rung; a forced rung is never left (a refusal is
  then an ordinary error).

Servers that constrain decoding natively get that constraint through the first rung they
accept: Ollama turns ``json_schema`` into its ``format`` and vLLM into guided decoding,
llama.cpp's server and llama-cpp-python compile the schema to a grammar. Such local servers
get the schema narrowed to the call (:func:`cjllm.provider.answers.answer_schema`), so the
grammar itself allows only the ids sent.
"""

from __future__ import annotations

import json
import logging
from enum import StrEnum
from typing import Any

from cjllm.provider.answers import OUTPUT_SCHEMA_NAME
from cjllm.provider.calls import ProviderCallError
from cjllm.provider.queue import Queue, QueueUnavailable

log = logging.getLogger(__name__)


class OutputMode(StrEnum):
    JSON_SCHEMA = "json_schema"
    JSON_OBJECT_SCHEMA = "json_object_schema"
    JSON_OBJECT = "json_object"
    TEXT = "text"


LADDER: tuple[OutputMode, ...] = tuple(OutputMode)
REFUSAL_STATUSES = (400, 422, 500)


def response_format(mode: OutputMode, schema: dict[str, Any]) -> dict[str, Any] | None:
    """The ``response_format`` of a rung (``None``: send none)."""
    if mode is OutputMode.JSON_SCHEMA:
        return {
            "type": "json_schema",
            "json_schema": {"name": OUTPUT_SCHEMA_NAME, "schema": schema, "strict": True},
        }
    if mode is OutputMode.JSON_OBJECT_SCHEMA:
        return {"type": "json_object", "schema": schema}
    if mode is OutputMode.JSON_OBJECT:
        return {"type": "json_object"}
    return None


def schema_in_prompt(mode: OutputMode, schema: dict[str, Any]) -> str | None:
    """The schema as prompt text, for the rungs where the server does not enforce it."""
    if mode in (OutputMode.JSON_SCHEMA, OutputMode.JSON_OBJECT_SCHEMA):
        return None
    return (
        "Answer with one JSON object and nothing else (no code fence, no comment). It must "
        "match this JSON schema:\n" + json.dumps(schema, separators=(",", ":"))
    )


def refuses_response_format(error: ProviderCallError) -> bool:
    """Whether a failed call was the server refusing our ``response_format``."""
    if error.status not in REFUSAL_STATUSES:
        return False
    return "response_format" in f"{error.message} {error.details.get('param') or ''}"


class OutputModes:
    """The rung each model on one server is on. ``forced`` pins every model to one rung."""

    def __init__(
        self, base_url: str, *, forced: OutputMode | None = None, store: Queue | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.forced = forced
        self.store = store
        self._known: dict[str, OutputMode] = {}

    def _key(self, model: str) -> str:
        return f"output_mode {self.base_url} {model}"

    def known(self, model: str) -> OutputMode | None:
        """The rung this process last used for ``model`` (``None`` before any call)."""
        return self.forced or self._known.get(model)

    async def current(self, model: str) -> OutputMode:
        """The rung to send ``model``'s next call on."""
        if self.forced is not None:
            return self.forced
        mode = self._known.get(model)
        if mode is None:
            mode = await self._recall(model) or LADDER[0]
            self._known[model] = mode
        return mode

    async def refused(self, model: str, mode: OutputMode, reason: str) -> OutputMode | None:
        """``mode`` was refused for ``model``: the rung to try now, or ``None`` when there is
        none left (or the mode is forced). Another worker may already have gone lower."""
        if self.forced is not None or mode is LADDER[-1]:
            return None
        lower = LADDER[LADDER.index(mode) + 1]
        stored = await self._recall(model)
        if stored is not None and LADDER.index(stored) > LADDER.index(lower):
            lower = stored
        log.warning(
            "%s refused response_format %s for %s (%s); using %s from now on",
            self.base_url,
            mode,
            model,
            reason[:200],
            lower,
        )
        self._known[model] = lower
        if self.store is not None:
            try:
                await self.store.remember(self._key(model), lower.value)
            except QueueUnavailable as exc:
                log.warning("could not record the output mode (%s); this process keeps it", exc)
        return lower

    async def _recall(self, model: str) -> OutputMode | None:
        if self.store is None:
            return None
        try:
            value = await self.store.recall(self._key(model))
        except QueueUnavailable as exc:
            log.warning("could not read the output mode (%s); starting at the top", exc)
            return None
        return OutputMode(value) if value in {m.value for m in OutputMode} else None
