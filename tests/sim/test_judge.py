"""The simulated judge: hidden qualities from a manifest, noise, position bias, a seeded coin."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cjllm.provider.adapters import make_adapter
from cjllm.provider.calls import BundleCall, BundleItem
from cjllm.settings import ProviderSettings
from cjllm.sim.judge import Judge, load_manifest_qualities, text_key
from tests.sim.running import SimControl

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "essays" / "manifest.json"


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    """Four essays of known quality, -3 < -1 < 1 < 3."""
    entries = []
    for i, quality in enumerate((-3.0, -1.0, 1.0, 3.0)):
        name = f"e{i}.txt"
        (tmp_path / name).write_text(f"Essay {i}: " + "some words here " * (5 + i))
        entries.append({"essay_id": f"e{i}", "file": name, "quality": quality})
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"essays": entries}))
    return path


def texts(manifest: Path) -> list[str]:
    return [(manifest.parent / f"e{i}.txt").read_text() for i in range(4)]


def test_the_higher_hidden_quality_wins_when_noise_is_small(manifest: Path) -> None:
    judge = Judge(load_manifest_qualities([manifest]), noise=0.05, unknown="coin")
    essays = texts(manifest)
    for a in range(4):
        for b in range(4):
            if a != b:
                decision = judge.decide(f"{a}-{b}", (essays[a], essays[b]))
                assert decision.winner == ("Essay A" if a > b else "Essay B")
                assert decision.confidence == 5.0


def test_noise_lets_the_weaker_essay_win_sometimes(manifest: Path) -> None:
    judge = Judge(load_manifest_qualities([manifest]), noise=4.0, unknown="coin")
    essays = texts(manifest)
    upsets = sum(
        judge.decide(f"n{i}", (essays[1], essays[2])).winner == "Essay A" for i in range(200)
    )
    assert 40 < upsets < 100  # P(upset) = sigmoid(-2/4) ≈ 0.38


def test_position_bias_favours_essay_a(manifest: Path) -> None:
    essays = texts(manifest)
    fair = Judge(load_manifest_qualities([manifest]), noise=1.0, unknown="coin")
    biased = Judge(load_manifest_qualities([manifest]), noise=1.0, position_bias=3.0)
    pair = (essays[1], essays[2])
    wins = [
        sum(j.decide(f"p{i}", pair).winner == "Essay A" for i in range(200)) for j in (fair, biased)
    ]
    assert wins[1] > wins[0] + 60


def test_unknown_essays_get_a_seeded_coin(manifest: Path) -> None:
    judge = Judge(load_manifest_qualities([manifest]), unknown="coin")
    known = texts(manifest)[3]
    decisions = [judge.decide(f"c{i}", ("an essay nobody knows", known)) for i in range(60)]
    winners = {d.winner for d in decisions}
    assert winners == {"Essay A", "Essay B"}
    assert all(d.confidence == 1.0 and "coin" in d.justification for d in decisions)
    assert [judge.decide(f"c{i}", ("an essay nobody knows", known)) for i in range(60)] == decisions


def test_a_known_essay_is_found_under_a_one_line_heading(manifest: Path) -> None:
    judge = Judge(load_manifest_qualities([manifest]), noise=0.05, unknown="coin")
    weak, strong = texts(manifest)[0], texts(manifest)[3]
    decision = judge.decide("h", (f"Essay A (id e0):\n{weak}", f"Essay B (id e3):\n\n{strong}"))
    assert decision.winner == "Essay B" and decision.confidence == 5.0


def test_the_same_item_gets_the_same_answer_on_retry() -> None:
    judge = Judge(noise=3.0)
    parts = ("first essay text, fairly short.", "second essay text, a little longer than that.")
    assert judge.decide("retry-me", parts) == judge.decide("retry-me", parts)


def test_the_examples_manifest_loads() -> None:
    qualities = load_manifest_qualities([EXAMPLES])
    assert len(qualities) >= 10
    first = json.loads(EXAMPLES.read_text())["essays"][0]
    text = (EXAMPLES.parent / first["file"]).read_text()
    assert qualities[text_key(text)] == first["quality"]


async def test_the_sim_judges_by_the_manifest_it_is_given(
    sim: SimControl, manifest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim.configure(judge={"manifests": [str(manifest)], "noise": 0.05})
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    monkeypatch.setenv("OPENAI_BASE_URL", sim.openai_base_url)
    essays = texts(manifest)
    pairs = [(a, b) for a in range(4) for b in range(4) if a != b]
    call = BundleCall(
        bundle_id="m",
        provider="openai",
        model="",
        system=(),
        shared=(),
        items=tuple(BundleItem(f"{a}v{b}", (essays[a], essays[b])) for a, b in pairs),
    )
    adapter = make_adapter("openai", ProviderSettings())
    try:
        outcome = await adapter.call_bundle(call)
    finally:
        await adapter.aclose()
    for a, b in pairs:
        expected = "Essay A" if a > b else "Essay B"
        assert outcome.reconciled.answers[f"{a}v{b}"].winner == expected
