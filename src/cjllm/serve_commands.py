"""The commands that run a service: ``cjllm serve provider``, ``cjllm serve cj`` and
``cjllm sim`` (registered on the ``cjllm`` app by :mod:`cjllm.cli`). Each imports its
service only when it runs, so ``cjllm --help`` stays fast."""

from __future__ import annotations

from typing import Annotated

import typer

serve_app = typer.Typer(help="Run a service.", no_args_is_help=True)


@serve_app.command("provider")
def serve_provider(
    host: str = typer.Option("127.0.0.1", "--host", help="Interface the HTTP API listens on."),
    port: int = typer.Option(8080, "--port", help="Port of the HTTP API."),
    worker_only: bool = typer.Option(
        False, "--worker-only", help="Run workers (and sweeper, publisher) but no HTTP API."
    ),
    api_only: bool = typer.Option(False, "--api-only", help="Run the HTTP API but no workers."),
) -> None:
    """The LLM Provider Service: queue comparisons, bundle them, publish one callback each.

    Settings come from CJLLM_* environment variables (queue, bus, limits, bundling).
    """
    import logging

    from cjllm.provider.service import run_provider
    from cjllm.settings import ProviderSettings

    if worker_only and api_only:
        raise typer.BadParameter("--worker-only and --api-only exclude each other")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    run_provider(ProviderSettings(), host, port, api=not worker_only, work=not api_only)


@serve_app.command("cj")
def serve_cj(
    host: str = typer.Option("127.0.0.1", "--host", help="Interface the HTTP API listens on."),
    port: int = typer.Option(8081, "--port", help="Port of the HTTP API."),
) -> None:
    """The CJ Assessment Service: plan rounds, send comparisons to the provider, score.

    Settings come from CJLLM_* environment variables: CJLLM_DATABASE_URL (PostgreSQL),
    CJLLM_BUS_URL (Kafka), CJLLM_PROVIDER_URL (the provider API), strategy and budgets.
    Start assessments with `cjllm submit` or POST /api/v1/assessments.
    """
    import logging

    from cjllm.cj.service import run_cj
    from cjllm.settings import CJSettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    run_cj(CJSettings(), host, port)


def sim(
    port: int = typer.Option(..., "--port", help="Port to listen on."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
    manifest: Annotated[
        list[str] | None,
        typer.Option("--manifest", help="Essay manifest.json with hidden qualities (repeatable)."),
    ] = None,
    noise: float = typer.Option(1.0, "--noise", help="Logistic noise of the judge (> 0)."),
    position_bias: float = typer.Option(0.0, "--position-bias", help="Logit bonus of Essay A."),
    seed: int = typer.Option(0, "--seed", help="Seed of the judge's draws."),
    unknown: str = typer.Option(
        "coin", "--unknown", help="Essays not in a manifest: 'coin' or 'heuristic'."
    ),
    latency_call: float = typer.Option(0.0, "--latency-call", help="Seconds per call."),
    latency_item: float = typer.Option(0.0, "--latency-item", help="Seconds per item."),
    latency_token: float = typer.Option(0.0, "--latency-token", help="Seconds per output token."),
    rpm: int | None = typer.Option(None, "--rpm", help="Requests per minute before 429."),
    itpm: int | None = typer.Option(
        None, "--itpm", help="Input tokens (without cache reads) per minute before 429."
    ),
    otpm: int | None = typer.Option(
        None, "--otpm", help="Output tokens per minute (charged at max_tokens) before 429."
    ),
    tpm: int | None = typer.Option(
        None, "--tpm", help="Input + output tokens per minute before 429."
    ),
    limit_period: float = typer.Option(
        60.0, "--limit-period", help="Seconds in the limits' minute (shorten to run faster)."
    ),
    fault: Annotated[
        list[str] | None,
        typer.Option("--fault", help="NAME=RATE, e.g. overloaded=0.05 (repeatable)."),
    ] = None,
    fault_seed: int = typer.Option(0, "--fault-seed", help="Seed of the fault draws."),
    api_key: str | None = typer.Option(None, "--api-key", help="Accept only this key."),
    cache_min_tokens: int = typer.Option(
        1024, "--cache-min-tokens", help="Shortest prefix the prompt cache keeps."
    ),
    batch_seconds: float = typer.Option(
        0.0, "--batch-seconds", help="Seconds a batch job stays in progress."
    ),
    openai_server: str = typer.Option(
        "openai",
        "--openai-server",
        help="Whose response_format dialect to imitate: openai, vllm, ollama, llama_cpp, "
        "llama_cpp_python, lm_studio, json_object_only or text_only.",
    ),
) -> None:
    """A simulated Anthropic/OpenAI-compatible provider for tests and benchmarks."""
    from cjllm.sim.server import build_config, run

    try:
        config = build_config(
            manifests=manifest or [],
            noise=noise,
            position_bias=position_bias,
            seed=seed,
            unknown=unknown,
            latency_call=latency_call,
            latency_item=latency_item,
            latency_token=latency_token,
            rpm=rpm,
            itpm=itpm,
            otpm=otpm,
            tpm=tpm,
            limit_period=limit_period,
            faults=fault or [],
            fault_seed=fault_seed,
            api_key=api_key,
            cache_min_tokens=cache_min_tokens,
            batch_seconds=batch_seconds,
            openai_server=openai_server,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    typer.echo(f"cjllm sim listening on http://{host}:{port} (GET /sim/counters)")
    run(config, host, port)
