"""Building the judge of a ``cjllm rank`` run, and how users are told which it is.

The provider is chosen by :func:`cjllm.preflight.choose_provider` (the simulated ``mock``
unless a provider is asked for or an API key is set). The adapter is built up front, so a
provider without usable credentials is refused before anything runs. The simulated judge
uses the intended qualities in a ``manifest.json`` beside the essays when there is one — a
simulation feature, said so in the output — and a text heuristic otherwise; which of the
two decided is the judge's ``mode``, part of the run's identity (a resumed run must have
the same judge in the same mode).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from cjllm.essays import EssayInputError
from cjllm.provider.adapters import make_adapter
from cjllm.provider.adapters.mock import MockAdapter
from cjllm.provider.adapters.vendor_errors import MissingCredentials
from cjllm.provider.calls import LLMAdapter
from cjllm.report.summary import HEURISTIC, LLM, MANIFEST, MIXED
from cjllm.settings import ProviderSettings
from cjllm.sim.judge import Judge, load_manifest_qualities

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
    mode: str = LLM  # how it decides: llm, manifest, heuristic or manifest+heuristic
    # what else makes this judge this judge (server, simulation parameters), for resuming
    details: dict[str, Any] = field(default_factory=dict)

    def identity(self) -> dict[str, Any]:
        """What a resumed run must share with the run it resumes."""
        return {
            "provider": self.provider,
            "model": self.model,
            "mode": self.mode,
            **self.details,
        }

    def describe(self) -> str:
        """The judge in a few words, for messages."""
        how = {MANIFEST: "manifest", HEURISTIC: "text heuristic", MIXED: "manifest and heuristic"}
        return self.label + (f", {how[self.mode]}" if self.mode in how else "")


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
    if provider not in ("anthropic", "openai"):
        raise JudgeUnavailable(f"--provider {provider!r}: choose mock, anthropic or openai")
    try:
        vendor = make_adapter(provider, settings)
    except MissingCredentials as exc:
        raise JudgeUnavailable(str(exc)) from None
    except ImportError as exc:
        raise JudgeUnavailable(f"the {provider} SDK is not installed: {exc}") from exc
    chosen = model or vendor.default_model
    base = redact_url(os.environ.get(f"{provider.upper()}_BASE_URL"))
    note = f"Each provider call is billed by {provider}" + (f" (at {base})." if base else ".")
    return Judging(
        provider, chosen, f"{provider} / {chosen}", note, vendor, details={"base_url": base}
    )


def redact_url(url: str | None) -> str | None:
    """A URL without the user name and password it may carry."""
    if not url:
        return None
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


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
    mode = HEURISTIC if not known else MANIFEST if known == len(texts) else MIXED
    simulation = {
        "qualities": sorted(
            (hashlib.sha256(t.encode("utf-8")).hexdigest(), q)
            for t in texts
            if (q := adapter.judge.known_quality(t)) is not None
        ),
        "noise": settings.mock_noise,
        "position_bias": settings.mock_position_bias,
    }
    digest = hashlib.sha256(json.dumps(simulation, sort_keys=True).encode()).hexdigest()
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
    return Judging(
        "mock",
        model or adapter.default_model,
        MOCK_LABEL,
        note,
        adapter,
        mode=mode,
        details={"simulation": digest},
    )
