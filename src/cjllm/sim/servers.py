"""Which ``response_format`` each imitated OpenAI-compatible server accepts, and how it
refuses the others (``cjllm sim --openai-server NAME``).

The refusals are shaped like the real servers' (status and wording), so the provider's
output-mode negotiation (:mod:`cjllm.provider.output_modes`) is tested against each:

- ``openai``, ``vllm``, ``ollama``, ``llama_cpp``: every type (``json_object`` may carry
  a ``schema``);
- ``llama_cpp_python``: ``json_object`` (with or without ``schema``) and ``text``; anything
  else is a 500 (its request validation failing inside the handler);
- ``lm_studio``: ``json_schema`` and ``text``; a 400 naming ``response_format.type``;
- ``json_object_only``: ``json_object`` without a schema and ``text``; a 400 for
  ``json_schema``, a 422 for a ``schema`` key;
- ``text_only``: no ``response_format`` at all; a 422 (extra inputs are not permitted).
"""

from __future__ import annotations

from typing import Any

from cjllm.sim.state import OpenAIServer, SimError


def check_response_format(server: OpenAIServer, body: dict[str, Any]) -> None:
    """Raise the server's refusal when it does not take ``body``'s ``response_format``."""
    form = body.get("response_format")
    if form is None:
        return
    kind = form.get("type") if isinstance(form, dict) else None
    if server == "text_only":
        raise SimError(
            422,
            "1 validation error: response_format: Extra inputs are not permitted",
            param="response_format",
        )
    if server == "llama_cpp_python" and kind not in ("json_object", "text"):
        raise SimError(
            500,
            "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', "
            "'response_format', 'type'), 'msg': \"Input should be 'text' or 'json_object'\", "
            f"'input': {kind!r}}}",
        )
    if server == "lm_studio" and kind not in ("json_schema", "text"):
        raise SimError(
            400,
            "'response_format.type' must be 'json_schema' or 'text'",
            param="response_format",
        )
    if server == "json_object_only":
        if kind not in ("json_object", "text"):
            raise SimError(
                400,
                "response_format.type: Input should be 'text' or 'json_object'",
                param="response_format",
            )
        if isinstance(form, dict) and "schema" in form:
            raise SimError(
                422,
                "response_format.schema: Extra inputs are not permitted",
                param="response_format",
            )
    if kind not in ("json_schema", "json_object", "text"):
        raise SimError(400, f"Invalid response_format type: {kind!r}", param="response_format")
