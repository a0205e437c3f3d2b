"""Everything ``cjllm rank`` checks before anything heavy is imported or started.

Options, inputs (essays, anchors, instructions, rubric) and the judge's credentials are
checked here with the standard library and :mod:`cjllm.essays` only, so a mistake is
reported in a fraction of a second — not after the SDKs, the database layer and the
services have loaded. The invariant: nothing in this module imports pydantic, an SDK, numpy
or SQLAlchemy (``tests/test_startup.py`` holds it).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cjllm.essays import (
    Essay,
    EssayInputError,
    check_distinct,
    load_anchors,
    load_essays,
    read_text,
)
from cjllm.strategies import BATCH_JOB_STRATEGIES, BatchingStrategy

MANIFEST_NAME = "manifest.json"
DEFAULT_INSTRUCTIONS = (
    "No assignment text was given. Judge which essay is the better piece of writing "
    "overall: the quality of its ideas and argument, its organisation, and its control "
    "of language."
)
PROVIDERS = ("mock", "anthropic", "openai")
PAIRINGS = ("adaptive", "random")  # the same as cjllm.cj.options.PAIRINGS (not imported here)
KEY_ENV = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}
# anything the vendor's SDK may take credentials from besides the key itself
CREDENTIAL_ENV = {
    "anthropic": (
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_AUTH_TOKEN",
        "ANTHROPIC_BASE_URL",
        "ANTHROPIC_PROFILE",
        "ANTHROPIC_CONFIG_DIR",
        "ANTHROPIC_IDENTITY_TOKEN",
        "ANTHROPIC_IDENTITY_TOKEN_FILE",
        "ANTHROPIC_FEDERATION_RULE_ID",
    ),
    "openai": ("OPENAI_API_KEY", "OPENAI_BASE_URL"),
}
MIN_COMPARISONS_PER_ESSAY = 5
"""Below this many comparisons per essay on average, ``cjllm rank`` warns before it starts:
the scale is then too rough for most uses (docs/decisions.md, "Planning the budget")."""
PLANNED_PER_ESSAY = 10.0
"""Comparisons per essay the CJ service plans when neither --comparisons-per-essay nor
--budget is given (its ``comparisons_per_essay`` default)."""


class RankError(Exception):
    """A problem the user must fix before (or instead of) running; the message says how."""


@dataclass(frozen=True)
class RankRequest:
    """What the command line asked for."""

    path: Path
    out_dir: Path
    provider: str | None = None
    model: str | None = None
    strategy: BatchingStrategy = BatchingStrategy.SERIAL_ROUND
    bundle_size: int | None = None
    comparisons_per_essay: float | None = None
    budget: int | None = None
    instructions: Path | None = None
    rubric: Path | None = None
    anchors: Path | None = None
    grade_scale: Sequence[str] | None = None
    seed: int = 0
    pairing: str | None = None


@dataclass(frozen=True)
class RankInputs:
    essays: list[Essay]
    anchors: list[Essay]
    instructions: str
    rubric: str | None
    manifest: Path | None


@dataclass(frozen=True)
class Checked:
    """A request whose options, inputs and credentials passed the checks."""

    request: RankRequest
    inputs: RankInputs
    provider: str
    budget_warning: str | None = None


def preflight(
    request: RankRequest, environ: Mapping[str, str] | None = None, *, credentials: bool = True
) -> Checked:
    """Check options, then inputs, then (unless ``credentials`` is False, as for an estimate)
    credentials; raise :class:`RankError` or :class:`EssayInputError` naming what to fix."""
    check_options(request, environ)
    inputs = load_inputs(request)
    warning = check_budget(request, len(inputs.essays) + len(inputs.anchors))
    provider = choose_provider(request.provider, environ)
    if request.strategy in BATCH_JOB_STRATEGIES and provider == "mock":
        raise RankError(
            f"--strategy {request.strategy.value} sends comparisons to a vendor's batch API "
            "(anthropic or openai): the mock judge has none. Pass --provider anthropic or "
            "--provider openai (docs/batch-jobs.md)."
        )
    if credentials:
        check_credentials(provider, environ)
    return Checked(request, inputs, provider, warning)


def planned_comparisons(request: RankRequest, n_essays: int) -> int:
    """The most comparisons the run may ask for: the smaller of ⌈K·n/2⌉ (K =
    --comparisons-per-essay) and --budget, of those given; ⌈10·n/2⌉ when neither is."""
    limits = []
    if request.comparisons_per_essay is not None:
        limits.append(math.ceil(request.comparisons_per_essay * n_essays / 2))
    if request.budget is not None:
        limits.append(request.budget)
    return min(limits) if limits else math.ceil(PLANNED_PER_ESSAY * n_essays / 2)


def check_budget(request: RankRequest, n_essays: int) -> str | None:
    """Plan the budget before any call: refuse one that cannot connect the comparison graph
    (fewer than n − 1 comparisons: some essays could never be placed on one scale with the
    rest, and the run would spend it all and fail); return a warning when it gives fewer
    than :data:`MIN_COMPARISONS_PER_ESSAY` per essay on average, else None. ``n_essays``
    counts anchors too (they are judged like any essay)."""
    planned = planned_comparisons(request, n_essays)
    needed = n_essays - 1
    for_minimum = math.ceil(MIN_COMPARISONS_PER_ESSAY * n_essays / 2)
    if planned < needed:
        given = []
        if request.budget is not None:
            given.append(f"--budget {request.budget}")
        if request.comparisons_per_essay is not None:
            given.append(f"--comparisons-per-essay {request.comparisons_per_essay:g}")
        raise RankError(
            f"{' with '.join(given)} allows {planned:,} comparisons for {n_essays:,} essays: "
            f"fewer than the {needed:,} (essays − 1) it takes to connect every essay to the "
            "rest, so no single scale could be fitted and nothing was sent. Allow at least "
            f"{needed:,} (--budget {needed}, --comparisons-per-essay "
            f"{2 * needed / n_essays:.2f}); {for_minimum:,} gives every essay "
            f"{MIN_COMPARISONS_PER_ESSAY} comparisons on average."
        )
    if planned < for_minimum:
        return (
            f"Budget: {planned:,} comparisons for {n_essays:,} essays, "
            f"{2 * planned / n_essays:.1f} per essay on average: below "
            f"{MIN_COMPARISONS_PER_ESSAY} per essay the intervals are wide and the reliability "
            f"low; {for_minimum:,} comparisons would give "
            f"{MIN_COMPARISONS_PER_ESSAY} per essay."
        )
    return None


def check_options(request: RankRequest, environ: Mapping[str, str] | None = None) -> None:
    env = os.environ if environ is None else environ
    if request.comparisons_per_essay is not None and request.comparisons_per_essay <= 0:
        raise RankError("--comparisons-per-essay must be > 0")
    if request.budget is not None and request.budget < 1:
        raise RankError("--budget must be at least 1")
    if request.bundle_size is not None and request.bundle_size < 1:
        raise RankError("--bundle-size must be at least 1")
    if request.pairing is not None and request.pairing not in PAIRINGS:
        raise RankError(f"--pairing must be one of {', '.join(PAIRINGS)}")
    if request.provider is not None and request.provider not in PROVIDERS:
        raise RankError(f"--provider {request.provider!r}: choose mock, anthropic or openai")
    if request.bundle_size is not None and request.strategy is BatchingStrategy.PER_REQUEST:
        raise RankError(
            "--bundle-size applies to serial_round, serial_override and the batch-job "
            f"strategies, not {request.strategy}"
        )
    if (
        request.strategy is BatchingStrategy.SERIAL_OVERRIDE
        and request.bundle_size is None
        and not env.get("CJLLM_SERIAL_OVERRIDE_BUNDLE_SIZE")
    ):
        raise RankError("--strategy serial_override needs --bundle-size N")


def load_inputs(request: RankRequest) -> RankInputs:
    """Read and check every input file; raises :class:`EssayInputError` naming the file."""
    essays = load_essays(request.path)
    anchors = load_anchors(request.anchors) if request.anchors is not None else []
    if request.anchors is not None:
        check_distinct(essays, anchors, request.anchors)
    instructions = (
        read_text(request.instructions, "instructions file").strip()
        if request.instructions is not None
        else DEFAULT_INSTRUCTIONS
    )
    if not instructions:
        assert request.instructions is not None
        raise EssayInputError(request.instructions, "the instructions file is empty")
    rubric = read_text(request.rubric, "rubric file").strip() if request.rubric else None
    if request.rubric is not None and not rubric:
        raise EssayInputError(request.rubric, "the rubric file is empty")
    manifest = request.path / MANIFEST_NAME if request.path.is_dir() else None
    return RankInputs(
        essays=essays,
        anchors=anchors,
        instructions=instructions,
        rubric=rubric,
        manifest=manifest if manifest is not None and manifest.is_file() else None,
    )


def choose_provider(requested: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The provider to use: the one asked for, else the first with an API key set, else mock."""
    if requested is not None:
        return requested
    env = os.environ if environ is None else environ
    for provider, key in KEY_ENV.items():
        if env.get(key):
            return provider
    return "mock"


def check_credentials(provider: str, environ: Mapping[str, str] | None = None) -> None:
    """Refuse a real provider for which nothing in the environment could supply credentials.

    This only rules out the certain failure (no key, no compatible server, no credentials
    profile); the SDK still decides when something is set, when the adapter is built.
    """
    if provider not in CREDENTIAL_ENV:
        return
    env = os.environ if environ is None else environ
    if any(env.get(name) for name in CREDENTIAL_ENV[provider]):
        return
    if provider == "anthropic" and (Path.home() / ".config" / "anthropic").is_dir():
        return  # a credentials profile may be there; the SDK reads it
    upper = provider.upper()
    kind = "an Anthropic" if provider == "anthropic" else "an OpenAI"
    raise RankError(
        f"the {provider} provider needs {upper}_API_KEY (or {upper}_BASE_URL naming "
        f"{kind}-compatible server that takes no key); or use --provider mock for the "
        "simulated judge"
    )
