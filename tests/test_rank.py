"""`cjllm rank` decisions that need no services: judge choice, options, run fingerprints."""

from __future__ import annotations

from pathlib import Path

import pytest

from cjllm.contracts import BatchingStrategy
from cjllm.judges import choose_provider
from cjllm.out_dir import differences
from cjllm.rank import RankError, RankRequest, fingerprint, prepare

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "essays"


def test_the_first_provider_with_a_key_is_chosen_else_mock() -> None:
    assert choose_provider(None, {}) == "mock"
    assert choose_provider(None, {"OPENAI_API_KEY": "k"}) == "openai"
    assert choose_provider(None, {"OPENAI_API_KEY": "k", "ANTHROPIC_API_KEY": "k"}) == "anthropic"
    assert choose_provider("mock", {"ANTHROPIC_API_KEY": "k"}) == "mock"


def test_mock_judge_with_a_manifest_says_it_is_simulated(tmp_path: Path) -> None:
    run = prepare(RankRequest(path=EXAMPLES, out_dir=tmp_path, provider="mock"))
    assert run.judging.label == "mock (simulated judge)"
    assert "simulation feature" in run.judging.note and "18 essays" in run.judging.note


def test_a_real_provider_without_credentials_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "ANTHROPIC_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(RankError, match="ANTHROPIC_API_KEY"):
        prepare(RankRequest(path=EXAMPLES, out_dir=tmp_path, provider="anthropic"))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"strategy": BatchingStrategy.SERIAL_OVERRIDE}, "needs --bundle-size"),
        ({"strategy": BatchingStrategy.PER_REQUEST, "bundle_size": 5}, "--bundle-size applies"),
        ({"strategy": BatchingStrategy.ASYNC_BATCH}, "not supported"),
        ({"budget": 0}, "--budget"),
        ({"comparisons_per_essay": 0.0}, "--comparisons-per-essay"),
        ({"provider": "llama"}, "mock, anthropic or openai"),
    ],
)
def test_bad_options_are_refused_before_running(
    tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    request = RankRequest(path=EXAMPLES, out_dir=tmp_path, **changes)  # type: ignore[arg-type]
    with pytest.raises(RankError, match=message):
        prepare(request)
    assert not any(tmp_path.iterdir())


def test_bundle_size_sets_the_override_or_the_round_size(tmp_path: Path) -> None:
    over = prepare(
        RankRequest(EXAMPLES, tmp_path, strategy=BatchingStrategy.SERIAL_OVERRIDE, bundle_size=7)
    )
    assert over.cj_settings.serial_override_bundle_size == 7
    rnd = prepare(RankRequest(EXAMPLES, tmp_path, bundle_size=12, budget=30))
    assert rnd.cj_settings.max_concurrent_comparisons == 12
    assert rnd.cj_settings.max_comparisons_total == 30
    assert rnd.cj_settings.llm_provider == "mock"


def test_fingerprint_names_what_changed(tmp_path: Path) -> None:
    first = prepare(RankRequest(EXAMPLES, tmp_path, provider="mock"))
    second = prepare(RankRequest(EXAMPLES, tmp_path, provider="mock", budget=20, seed=3))
    assert differences(
        fingerprint(first.request, first.inputs, first.judging),
        fingerprint(second.request, second.inputs, second.judging),
    ) == ["budget", "seed"]
