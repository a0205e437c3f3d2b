"""The final fit's second chain in a helper process: the same figures as sampled in-process,
and a helper that dies surfaces as an error (the batch is retried), never as a hang or a
fallback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import BrokenExecutor, ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from cjllm.cj import chain_process
from cjllm.cj.options import BatchOptions
from cjllm.cj.ranking import BatchFit, final_fit, fit_outcomes
from cjllm.cj.records import EssayRecord, PairOutcome
from cjllm.cj.tables import ComparisonStatus
from tests.cj.conftest import MakeHarness, essays_with_quality, judging_stub

BATCH_ID = "3b0f4a52-8f0e-4c55-9d8a-1f2e3d4c5b6a"


@pytest.fixture
def fresh_helper() -> Iterator[None]:
    """A helper process of this test's own; a killed one is not left to later tests."""
    _discard_current()
    yield
    _discard_current()


def _discard_current() -> None:
    chain_process.discard(chain_process.executor())


def _kill(pool: ProcessPoolExecutor) -> None:
    for pid in list(pool._processes or {}):
        os.kill(pid, signal.SIGKILL)


def judged(n: int, per_essay: int, seed: int) -> tuple[list[EssayRecord], list[PairOutcome]]:
    rng = np.random.default_rng(seed)
    truth = rng.normal(0.0, 1.5, n)
    essays = [EssayRecord(f"e{i:02d}", i, f"text {i}", None) for i in range(n)]
    pairs = np.concatenate([rng.permutation(n) for _ in range(per_essay)]).reshape(-1, 2)
    won = rng.random(len(pairs)) < 1.0 / (1.0 + np.exp(truth[pairs[:, 1]] - truth[pairs[:, 0]]))
    outcomes = [
        PairOutcome(f"e{a:02d}", f"e{b:02d}", ComparisonStatus.SUCCEEDED,
                    "Essay A" if w else "Essay B", 1, 1)
        for (a, b), w in zip(pairs.tolist(), won.tolist(), strict=True)
    ]  # fmt: skip
    return essays, outcomes


def figures(fit: BatchFit) -> dict[str, object]:
    return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in asdict(fit).items()
            if k != "model"}  # fmt: skip


@pytest.mark.usefixtures("fresh_helper")
def test_the_helper_process_gives_the_figures_of_sampling_both_chains_here() -> None:
    essays, outcomes = judged(30, 6, seed=3)
    options = BatchOptions()
    here = final_fit(essays, outcomes, options)
    round_fit = fit_outcomes(essays, outcomes, options)
    helped = final_fit(essays, outcomes, options, fit=round_fit, executor=chain_process.executor())
    assert helped.sampled and figures(helped) == figures(here)


def test_the_final_fit_refuses_a_round_fit_of_other_comparisons() -> None:
    essays, outcomes = judged(12, 4, seed=4)
    options = BatchOptions()
    with pytest.raises(ValueError, match="other comparisons"):
        final_fit(essays, outcomes, options, fit=fit_outcomes(essays, outcomes[:-1], options))


@pytest.mark.usefixtures("fresh_helper")
def test_a_dead_helper_process_is_an_error_and_the_next_one_works() -> None:
    essays, outcomes = judged(20, 6, seed=5)
    options = BatchOptions()
    pool = chain_process.executor()
    _kill(pool)
    with pytest.raises(BrokenExecutor):
        final_fit(essays, outcomes, options, executor=pool)
    chain_process.discard(pool)
    fresh = chain_process.executor()
    assert fresh is not pool
    helped = final_fit(essays, outcomes, options, executor=fresh)
    assert figures(helped) == figures(final_fit(essays, outcomes, options))


@pytest.mark.usefixtures("fresh_helper")
async def test_a_batch_whose_helper_process_dies_is_retried_to_the_same_ranking(
    make_harness: MakeHarness, tmp_path: Path
) -> None:
    essays, qualities = essays_with_quality(6)
    rankings = []
    for kill in (False, True):
        h = await make_harness(
            stub=judging_stub(qualities),
            max_concurrent_comparisons=3,
            database_url=f"sqlite+aiosqlite:///{tmp_path}/cj-{kill}.sqlite",
        )
        await h.cj.start_batch(essays, instructions="Describe a journey.", batch_id=BATCH_ID)
        if kill:  # the first round has started the helper: it dies before the final fit
            _kill(chain_process.executor())
        result = await h.cj.wait_for_completion(BATCH_ID, timeout=60)
        assert (result.status, result.comparisons_succeeded) == ("completed", 30)
        rows = await h.cj.store.comparisons(BATCH_ID)
        assert len(rows) == 30 and all(r.status == ComparisonStatus.SUCCEEDED for r in rows)
        ignored = (await h.cj.progress(BATCH_ID)).ignored_callbacks
        assert (ignored > 0) == kill  # the failed final fit was retried by redelivery
        rankings.append([(e.essay_id, e.score, e.se) for e in result.ranking])
    assert rankings[0] == rankings[1]


@pytest.mark.usefixtures("fresh_helper")
def test_the_helper_process_runs_its_blas_on_one_thread() -> None:
    libraries = chain_process.executor().submit(threadpool_info).result(timeout=60)
    blas = [lib for lib in libraries if lib["user_api"] == "blas"]
    assert blas and all(lib["num_threads"] == 1 for lib in blas)


PARENT = """
from cjllm.cj import chain_process
pool = chain_process.executor()
print(pool.submit(os.getpid).result(timeout=60), flush=True)
time.sleep(600)
"""


def test_the_helper_process_leaves_when_its_parent_is_killed() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", "import os, time\n" + PARENT], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        helper = int(parent.stdout.readline())
        os.kill(parent.pid, signal.SIGKILL)  # no shutdown of the pool: the parent just dies
        parent.wait(timeout=60)
        for _ in range(600):
            if not _alive(helper):
                break
            time.sleep(0.1)
        assert not _alive(helper)
    finally:
        parent.kill()


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return status.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has left already
