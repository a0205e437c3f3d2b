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
            "--pairs", "12", "--layouts", "single,bundle:5,bundle:10", "--concurrency", "4",
        ])  # fmt: skip
        calls = sim.counters()["calls"]
    # 12 pairs in both orders: 24 single calls twice, bundles of 5 (3 + 3) and 10 (2 + 2)
    assert calls == 24 + 24 + 6 + 4
    for label, expected in (
        ("single", 24),
        ("single again", 24),
        ("bundle:5", 6),
        ("bundle:10", 4),
    ):
        cells = row(text, label)
        assert int(cells[0]) == expected
        assert cells[1] == "1.00"  # every comparison answered
    # a judge with a strong first-position bias is not position-consistent
    consistency = [float(row(text, label)[3]) for label in ("single", "bundle:5", "bundle:10")]
    assert all(0.0 <= c < 1.0 for c in consistency)
    assert float(row(text, "single")[4]) > 0.5  # Essay A wins more than half
    assert re.search(r"single calls agree with themselves on \d+% of judgements", text)
    assert re.search(r"recommended CJLLM_MAX_ITEMS_PER_CALL: \d+", text)
