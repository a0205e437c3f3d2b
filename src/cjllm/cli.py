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
