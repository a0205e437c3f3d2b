"""Choosing the judge of a ``cjllm rank`` run, and how users are told which it is.

The judge is the simulated one (``mock``) unless a provider is asked for, or an API key is
set (``ANTHROPIC_API_KEY``, then ``OPENAI_API_KEY``). The adapter is built up front, so a
provider without usable credentials is refused before anything runs. The simulated judge
uses the intended qualities in a ``manifest.json`` beside the essays when there is one — a
simulation feature, said so in the output — and a text heuristic otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cjllm.essays import EssayInputError
from cjllm.provider.adapters import make_adapter
from cjllm.provider.adapters.mock import MockAdapter
from cjllm.provider.adapters.vendor_errors import MissingCredentials
from cjllm.provider.calls import LLMAdapter
from cjllm.settings import ProviderSettings
from cjllm.sim.judge import Judge, load_manifest_qualities

KEY_ENV = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}
MOCK_LABEL = "mock (simulated judge)"


class JudgeUnavailable(Exception):
    """The provider asked for cannot be used (unknown, no credentials, SDK missing)."""


@dataclass(frozen=True)
class Judging:
    """The judge chosen for a run: the adapter to call, and how users are told about it."""

    provider: str
    model: str
    label: str
    note: str
    adapter: LLMAdapter


def choose_provider(requested: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The provider to use: the one asked for, else the first with an API key set, else mock."""
    if requested is not None:
        return requested
    env = os.environ if environ is None else environ
    for provider, key in KEY_ENV.items():
        if env.get(key):
            return provider
    return "mock"


def make_judge(
    provider: str,
    model: str | None,
    settings: ProviderSettings,
    *,
    seed: int,
    manifest: Path | None,
    texts: Sequence[str],
) -> Judging:
    """Build the judge's adapter now. ``texts`` are the essays (to say how many the
    manifest knows)."""
    if provider == "mock":
        return _simulated(model, settings, seed, manifest, texts)
    if provider not in KEY_ENV:
        raise JudgeUnavailable(f"--provider {provider!r}: choose mock, anthropic or openai")
    try:
        vendor = make_adapter(provider, settings)
    except MissingCredentials as exc:
        raise JudgeUnavailable(str(exc)) from None
    except ImportError as exc:
        raise JudgeUnavailable(f"the {provider} SDK is not installed: {exc}") from exc
    chosen = model or vendor.default_model
    base = os.environ.get(f"{provider.upper()}_BASE_URL")
    note = f"Each provider call is billed by {provider}" + (f" (at {base})." if base else ".")
    return Judging(provider, chosen, f"{provider} / {chosen}", note, vendor)


def _simulated(
    model: str | None,
    settings: ProviderSettings,
    seed: int,
    manifest: Path | None,
    texts: Sequence[str],
) -> Judging:
    adapter = MockAdapter.from_settings(settings)
    qualities: dict[str, float] = {}
    if manifest is not None:
        try:
            qualities = load_manifest_qualities([manifest])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise EssayInputError(
                manifest,
                f"unreadable simulation manifest ({type(exc).__name__}: {exc}); fix it or "
                "move it out of the essays folder",
            ) from None
    adapter.judge = Judge(
        qualities=qualities,
        noise=settings.mock_noise,
        position_bias=settings.mock_position_bias,
        seed=seed,
    )
    known = sum(adapter.judge.known_quality(t) is not None for t in texts)
    if known:
        rest = len(texts) - known
        note = (
            f"No LLM is called. The simulated judge knows the intended quality of {known} "
            f"essays from {manifest} (a simulation feature, for demos and tests)"
            + (f"; the other {rest} are judged by a text heuristic." if rest else ".")
        )
    else:
        note = (
            "No LLM is called: the simulated judge decides by a text heuristic. Set "
            "ANTHROPIC_API_KEY or OPENAI_API_KEY (or pass --provider) for a real judge."
        )
    return Judging("mock", model or adapter.default_model, MOCK_LABEL, note, adapter)
