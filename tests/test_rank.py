"""`cjllm rank` decisions that need no services: judge choice, options, credentials, run
fingerprints."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from cjllm.contracts import BatchingStrategy
from cjllm.out_dir import differences
from cjllm.preflight import check_credentials, choose_provider, preflight
from cjllm.rank import RankError, RankRequest, bundle_layout, prepare, run_context
from cjllm.run_identity import fingerprint

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
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.config/anthropic credentials profile
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "ANTHROPIC_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(RankError, match="ANTHROPIC_API_KEY"):
        prepare(RankRequest(path=EXAMPLES, out_dir=tmp_path, provider="anthropic"))


def test_credentials_are_checked_from_the_environment_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(RankError, match=r"OPENAI_API_KEY .*--provider mock"):
        check_credentials("openai", {})
    with pytest.raises(RankError, match="ANTHROPIC_API_KEY"):
        check_credentials("anthropic", {"OPENAI_API_KEY": "k"})
    # a key, a compatible server or a credentials profile: the SDK decides later
    check_credentials("openai", {"OPENAI_BASE_URL": "http://127.0.0.1:1/v1"})
    check_credentials("anthropic", {"ANTHROPIC_AUTH_TOKEN": "t"})
    (tmp_path / ".config" / "anthropic").mkdir(parents=True)
    check_credentials("anthropic", {})
    check_credentials("mock", {})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"strategy": BatchingStrategy.SERIAL_OVERRIDE}, "needs --bundle-size"),
        ({"strategy": BatchingStrategy.PER_REQUEST, "bundle_size": 5}, "--bundle-size applies"),
        ({"strategy": BatchingStrategy.ASYNC_BATCH, "provider": "mock"}, "the mock judge has none"),
        ({"budget": 0}, "--budget"),
        ({"comparisons_per_essay": 0.0}, "--comparisons-per-essay"),
        ({"provider": "llama"}, "mock, anthropic or openai"),
        ({"pairing": "swiss"}, "--pairing"),
    ],
)
def test_bad_options_are_refused_before_running(
    tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    request = RankRequest(path=EXAMPLES, out_dir=tmp_path, **changes)  # type: ignore[arg-type]
    with pytest.raises(RankError, match=message):
        prepare(request)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "changes",
    [{"budget": 16}, {"comparisons_per_essay": 1.5}, {"comparisons_per_essay": 4, "budget": 10}],
    ids=["budget", "per essay", "both"],
)
def test_a_budget_that_cannot_connect_the_essays_is_refused_before_any_call(
    tmp_path: Path, changes: dict[str, object]
) -> None:
    # 18 essays need 17 comparisons at least to sit on one scale
    request = RankRequest(path=EXAMPLES, out_dir=tmp_path, **changes)  # type: ignore[arg-type]
    with pytest.raises(RankError, match=r"fewer than the 17 \(essays − 1\)") as refused:
        preflight(request, credentials=False)
    assert "--budget 17" in str(refused.value) and "45 gives every essay 5" in str(refused.value)
    assert not any(tmp_path.iterdir())


def test_a_budget_below_the_stated_minimum_per_essay_is_warned_of_and_run(
    tmp_path: Path,
) -> None:
    low = preflight(RankRequest(EXAMPLES, tmp_path, budget=17), credentials=False)
    assert low.budget_warning is not None
    assert "1.9 per essay" in low.budget_warning and "45 comparisons" in low.budget_warning
    for enough in ({"budget": 45}, {"comparisons_per_essay": 5}, {}):
        checked = preflight(RankRequest(EXAMPLES, tmp_path, **enough), credentials=False)  # type: ignore[arg-type]
        assert checked.budget_warning is None, enough


def test_bundle_size_sets_the_override_or_the_round_size(tmp_path: Path) -> None:
    over = prepare(
        RankRequest(EXAMPLES, tmp_path, strategy=BatchingStrategy.SERIAL_OVERRIDE, bundle_size=7)
    )
    assert over.cj_settings.serial_override_bundle_size == 7
    rnd = prepare(RankRequest(EXAMPLES, tmp_path, bundle_size=12, budget=30))
    assert rnd.cj_settings.max_concurrent_comparisons == 12
    assert rnd.cj_settings.max_comparisons_total == 30
    assert rnd.cj_settings.llm_provider == "mock"


def test_the_layout_in_effect_is_named_unless_a_call_holds_one_comparison(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert bundle_layout(prepare(RankRequest(EXAMPLES, tmp_path))) == "items"
    single = RankRequest(EXAMPLES, tmp_path, strategy=BatchingStrategy.PER_REQUEST)
    assert bundle_layout(prepare(single)) is None
    monkeypatch.setenv("CJLLM_BUNDLE_LAYOUT", "pool")  # both services read it
    assert run_context(prepare(RankRequest(EXAMPLES, tmp_path))).bundle_layout == "pool"


def test_fingerprint_names_what_changed(tmp_path: Path) -> None:
    first = prepare(RankRequest(EXAMPLES, tmp_path, provider="mock"))
    second = prepare(RankRequest(EXAMPLES, tmp_path, provider="mock", budget=20, seed=3))
    assert differences(
        fingerprint(first.request, first.inputs, first.judging),
        fingerprint(second.request, second.inputs, second.judging),
    ) == ["budget", "seed"]


def _same_texts_as_csv(folder: Path, target: Path) -> Path:
    with target.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["essay_id", "text"])
        for path in sorted(folder.glob("*.txt")):
            writer.writerow([path.stem, path.read_text(encoding="utf-8")])
    return target


def test_fingerprint_covers_the_judge_and_how_it_decides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same texts from a CSV (no manifest: text heuristic) are another run than the
    examples folder (manifest): only the judge differs, and it is named."""
    by_manifest = prepare(RankRequest(EXAMPLES, tmp_path, provider="mock"))
    table = _same_texts_as_csv(EXAMPLES, tmp_path / "essays.csv")
    by_heuristic = prepare(RankRequest(table, tmp_path, provider="mock"))
    assert by_manifest.judging.mode == "manifest" and by_heuristic.judging.mode == "heuristic"
    first = fingerprint(by_manifest.request, by_manifest.inputs, by_manifest.judging)
    second = fingerprint(by_heuristic.request, by_heuristic.inputs, by_heuristic.judging)
    assert first["essays"] == second["essays"]
    assert differences(first, second) == ["judge"]
    # the simulated judge's parameters are part of it too
    monkeypatch.setenv("CJLLM_MOCK_NOISE", "2.5")
    noisier = prepare(RankRequest(EXAMPLES, tmp_path, provider="mock"))
    third = fingerprint(noisier.request, noisier.inputs, noisier.judging)
    assert differences(first, third) == ["judge"]


def test_a_password_in_the_base_url_stays_out_of_the_run_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://user:s3cret@127.0.0.1:9/v1")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    run = prepare(RankRequest(EXAMPLES, tmp_path, provider="openai", model="m"))
    identity = run.judging.identity()
    assert identity["base_url"] == "http://127.0.0.1:9/v1"
    assert "s3cret" not in run.judging.note
