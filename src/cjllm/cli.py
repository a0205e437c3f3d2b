"""The ``cjllm`` command line."""

from __future__ import annotations

import typer

from cjllm import __version__

app = typer.Typer(
    name="cjllm",
    help="Rank essays by comparative judgement with an LLM judge.",
    no_args_is_help=True,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cjllm {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """Rank essays by comparative judgement with an LLM judge."""


serve_app = typer.Typer(help="Run a service.", no_args_is_help=True)
app.add_typer(serve_app, name="serve")


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
