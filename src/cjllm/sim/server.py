"""The simulated provider server (``cjllm sim``): an ASGI app speaking both vendors' HTTP APIs.

Vendor endpoints (the subset our adapters and the batch watcher use):
``POST /v1/messages``, ``/v1/messages/batches`` (create, list, retrieve, cancel, results),
``POST /v1/chat/completions``, ``POST /v1/completions``, ``/v1/files`` (upload, retrieve,
content) and ``/v1/batches`` (create, retrieve, cancel). Point the SDKs at it with
``ANTHROPIC_BASE_URL=http://HOST:PORT`` and ``OPENAI_BASE_URL=http://HOST:PORT/v1``; any
non-empty key is accepted unless ``--api-key`` sets one.

Control endpoints (for tests and benchmarks):

- ``GET /sim/counters`` — requests per endpoint, responses per status, answered calls,
  items, items per call, tokens (input, output, cache writes and reads), faults, batches.
- ``GET /sim/calls?limit=N`` — the last N answered calls: endpoint, model, custom_ids,
  faults, stop reason, usage and the request body as received.
- ``GET /sim/config`` / ``PATCH /sim/config`` — read or change the configuration
  (:class:`~cjllm.sim.state.SimConfig`; nested objects merge, lists replace);
  ``{"out_of_credit": true}`` makes every model call answer as an account without credit.
  The API key is never shown: it reads ``"***"`` when one is set.
- ``POST /sim/reset`` — zero the counters, call log, caches, rate-limit buckets and stores.

Rate limits are the vendors' token buckets (:mod:`cjllm.sim.limits`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from cjllm.sim import anthropic_api, anthropic_batches, openai_api, openai_batches
from cjllm.sim.faults import parse_fault
from cjllm.sim.state import SimConfig, SimState, merged


def create_app(
    config: SimConfig | None = None, qualities: dict[str, float] | None = None
) -> FastAPI:
    """The ASGI app. ``qualities`` (text hash → hidden quality) adds to the manifests'."""
    app = FastAPI(title="cjllm simulated provider", docs_url=None, redoc_url=None)
    app.state.sim = SimState.create(config or SimConfig(), qualities)
    for module in (anthropic_api, anthropic_batches, openai_api, openai_batches):
        app.include_router(module.router)

    @app.get("/sim/counters")
    async def counters(request: Request) -> dict[str, Any]:
        return request.app.state.sim.counters.snapshot()  # type: ignore[no-any-return]

    @app.get("/sim/calls")
    async def calls(request: Request, limit: int = 20) -> dict[str, Any]:
        log = list(request.app.state.sim.calls)
        return {"calls": log[-limit:] if limit > 0 else []}

    @app.get("/sim/config")
    async def get_config(request: Request) -> dict[str, Any]:
        return _shown(request.app.state.sim.config)

    @app.patch("/sim/config", response_model=None)
    async def patch_config(request: Request) -> JSONResponse | dict[str, Any]:
        state: SimState = request.app.state.sim
        patch = await request.json()
        if not isinstance(patch, dict):
            return JSONResponse({"detail": "expected a JSON object"}, status_code=422)
        try:
            new = merged(state.config, patch)
        except ValidationError as exc:
            return JSONResponse({"detail": exc.errors(include_url=False)}, status_code=422)
        state.apply(new)
        return _shown(new)

    @app.post("/sim/reset")
    async def reset(request: Request) -> dict[str, Any]:
        request.app.state.sim.reset()
        return {"reset": True}

    return app


def _shown(config: SimConfig) -> dict[str, Any]:
    """The configuration as the control API shows it: everything but the API key."""
    return {**config.model_dump(), "api_key": None if config.api_key is None else "***"}


def build_config(
    *,
    manifests: Sequence[str] = (),
    noise: float = 1.0,
    position_bias: float = 0.0,
    seed: int = 0,
    unknown: str = "coin",
    latency_call: float = 0.0,
    latency_item: float = 0.0,
    latency_token: float = 0.0,
    rpm: int | None = None,
    itpm: int | None = None,
    otpm: int | None = None,
    tpm: int | None = None,
    limit_period: float = 60.0,
    faults: Sequence[str] = (),
    fault_seed: int = 0,
    api_key: str | None = None,
    cache_min_tokens: int = 1024,
    batch_seconds: float = 0.0,
    openai_server: str = "openai",
) -> SimConfig:
    """A configuration from command-line values (``faults`` as ``NAME=RATE`` strings)."""
    return SimConfig.model_validate(
        {
            "judge": {
                "noise": noise,
                "position_bias": position_bias,
                "seed": seed,
                "unknown": unknown,
                "manifests": list(manifests),
            },
            "latency": {
                "per_call": latency_call,
                "per_item": latency_item,
                "per_output_token": latency_token,
            },
            "limits": {
                "requests_per_minute": rpm,
                "input_tokens_per_minute": itpm,
                "output_tokens_per_minute": otpm,
                "tokens_per_minute": tpm,
                "period_seconds": limit_period,
            },
            "faults": dict(parse_fault(f) for f in faults),
            "fault_seed": fault_seed,
            "api_key": api_key,
            "cache_min_tokens": cache_min_tokens,
            "batch_seconds": batch_seconds,
            "openai_server": openai_server,
        }
    )


def run(config: SimConfig, host: str, port: int) -> None:
    """Serve until interrupted."""
    import uvicorn

    uvicorn.run(create_app(config), host=host, port=port, log_level="warning")
