"""``bench/judge_agreement.py`` end to end: the real ``openai`` SDK against ``cjllm sim``."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

from cjllm.sim.state import JudgeConfig, SimConfig
from tests.e2e.cli import EXAMPLES, REPO
from tests.sim.running import running_sim


def bench_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "judge_agreement", REPO / "bench" / "judge_agreement.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def row(text: str, label: str) -> list[str]:
    (line,) = [x for x in text.splitlines() if re.match(re.escape(label) + r"\s+\d", x)]
    return line[len(label) :].split()


def test_judge_agreement_measures_bundles_against_single_calls(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    judge = JudgeConfig(
        noise=1.0, position_bias=1.5, seed=5, manifests=[str(EXAMPLES / "manifest.json")]
    )
    monkeypatch.setenv("OPENAI_API_KEY", "sim-key")
    with running_sim(SimConfig(judge=judge)) as sim:
        text = bench_module().main([
            "--base-url", sim.openai_base_url, "--model", "sim-judge", "--essays", str(EXAMPLES),
            "--pairs", "12", "--layouts", "single,bundle:5,bundle:10,pool:10",
            "--concurrency", "4",
        ])  # fmt: skip
        calls = sim.counters()["calls"]
    # 12 pairs in both orders: 24 single calls twice, bundles of 5 (3 + 3) and 10 (2 + 2)
    for label, expected in (
        ("single", 24),
        ("single again", 24),
        ("bundle:5", 6),
        ("bundle:10", 4),
    ):
        cells = row(text, label)
        assert int(cells[0]) == expected
        assert cells[1] == "1.00"  # every comparison answered
    pooled = row(text, "pool:10")
    assert pooled[1] == "1.00"  # the simulated model read every item of the pooled prompts
    assert calls == 24 + 24 + 6 + 4 + int(pooled[0])
    # each essay of a pooled call is sent once however many of its comparisons name it
    assert int(pooled[0]) < 24 and int(pooled[-1]) < int(row(text, "bundle:10")[-1])
    # a judge with a strong first-position bias is not position-consistent
    labels = ("single", "bundle:5", "bundle:10", "pool:10")
    assert all(0.0 <= float(row(text, label)[3]) < 1.0 for label in labels)
    assert float(row(text, "single")[4]) > 0.5  # Essay A wins more than half
    assert re.search(r"single calls agree with themselves on \d+% of judgements", text)
    assert re.search(r"recommended CJLLM_MAX_ITEMS_PER_CALL: \d+", text)
    assert re.search(
        r"pool layout \(CJLLM_BUNDLE_LAYOUT=pool\) (kept|did not keep) agreement", text
    )


def test_pooled_calls_hold_at_most_k_essays_and_every_comparison_once() -> None:
    pool = bench_module().pool
    pairs = [(a, b) for a in range(6) for b in range(a + 1, 6)]  # every pair of six essays
    items = [(k, "AB") for k in range(len(pairs))]
    (whole,) = pool(items, 6, pairs)  # six essays fit one call: all 15 comparisons in it
    assert sorted(whole) == items
    sparse = [*pairs[::2], (6, 7), (8, 9), (7, 8)]
    items = [(k, "BA") for k in range(len(sparse))]
    calls = pool(items, 4, sparse)
    assert sorted(item for call in calls for item in call) == items
    for call in calls:
        assert len({e for k, _ in call for e in sparse[k]}) <= 4
