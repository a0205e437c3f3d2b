"""Where the time of one embedded ``cjllm rank`` job goes: a timeline of its phases.

    python bench/rank_timeline.py ESSAYS_DIR OUT_DIR [more cjllm rank options]

Runs ``cjllm rank ESSAYS_DIR --out OUT_DIR --provider mock --comparisons-per-essay 10`` in
this process with timers around each phase (start-up of the services, each round's fit,
planning and submissions, the callbacks, the final fit, the completion, the report) and
prints one line per phase: start and end in seconds from ``run.json`` being written (the
job's start as ``bench/throughput.py`` counts it), its length, the rank process's CPU time
meanwhile (all its threads; more robust than the length on a loaded machine) and thread;
then the head (until ``start_batch``) and the tail (from the last ``_decide``). The job ends at
``run_context`` (``ranking.json``'s ``finished_at``). Timers only: the code run is the
installed package's (put another ``src`` first on ``PYTHONPATH`` to time that instead).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

START = time.perf_counter()
SPANS: list[tuple[float, float, str, str]] = []
CPU: dict[float, float] = {START: time.process_time()}  # a span's start/end → CPU seconds


def _now() -> float:
    now = time.perf_counter()
    CPU[now] = time.process_time()
    return now


def _mark(name: str, began: float) -> None:
    SPANS.append((began, _now(), name, threading.current_thread().name))


def _timed(owner: Any, attr: str, label: str | None = None) -> None:
    inner = getattr(owner, attr)
    name = label or attr
    if inspect.iscoroutinefunction(inner):

        @functools.wraps(inner)
        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            began = _now()
            try:
                return await inner(*args, **kwargs)
            finally:
                _mark(name, began)

        setattr(owner, attr, timed_async)
    else:

        @functools.wraps(inner)
        def timed(*args: Any, **kwargs: Any) -> Any:
            began = _now()
            try:
                return inner(*args, **kwargs)
            finally:
                _mark(name, began)

        setattr(owner, attr, timed)


def _timed_context(owner: Any, attr: str) -> None:
    """Time entering and leaving an async context manager function."""
    inner: Callable[..., contextlib.AbstractAsyncContextManager[Any]] = getattr(owner, attr)

    @contextlib.asynccontextmanager
    async def timed(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        began = _now()
        async with inner(*args, **kwargs) as value:
            _mark(f"{attr} (start-up)", began)
            try:
                yield value
            finally:
                began = _now()
        _mark(f"{attr} (shut-down)", began)

    setattr(owner, attr, timed)


def main() -> None:
    import cjllm.cj.chain_process as chain_process
    import cjllm.cj.completion as completion
    import cjllm.cj.evidence as evidence
    import cjllm.cj.workflow as workflow
    import cjllm.embedded as embedded
    import cjllm.rank as rank
    from cjllm.cli import app

    _mark("imports", START)
    for name in ("batch_for", "run_context", "write_report"):
        _timed(rank, name)
    if hasattr(evidence, "SettledEvidence"):  # read round by round (else at the end: older src)
        _timed(evidence.SettledEvidence, "judgements", "judgements (report evidence)")
        _timed(evidence, "_read", "evidence read")
    else:
        _timed(rank, "judgements", "judgements (report evidence)")
    _timed_context(rank, "embedded_services")
    _timed_context(embedded, "embedded_provider")
    _timed_context(embedded, "cj_service")
    for name in ("start_batch", "_decide", "_finish", "handle_callbacks"):
        _timed(workflow.CJWorkflow, name)
    if hasattr(workflow.CJWorkflow, "_final_fit"):  # older src: the workflow decided itself
        decision: Any = workflow
        _timed(workflow.CJWorkflow, "_final_fit")
    else:
        import cjllm.cj.round_decision as decision

        _timed(decision, "_final_fit")
    _timed(decision, "fit_outcomes", "round fit")
    _timed(decision, "final_fit")
    _timed(workflow.rounds, "plan_next_round", "pairing")
    _timed(workflow.rounds, "perform_comparisons", "submissions")
    _timed(chain_process, "executor", "chain process (start)")
    for name in ("build_ranking", "split_half", "classical_ssr"):
        _timed(completion, name)
    essays, out, *rest = sys.argv[1:]
    sys.argv = ["cjllm", "rank", essays, "--out", out, "--provider", "mock",
                "--comparisons-per-essay", "10", *rest]  # fmt: skip
    try:
        app()
    except SystemExit:
        pass
    _report()


def _report() -> None:
    zero = next(end for _, end, name, _ in SPANS if name == "batch_for")
    finished = next(start for start, _, name, _ in SPANS if name == "run_context")
    print(f"{'from s':>8}{'to s':>8}{'ms':>9}{'CPU ms':>9}  {'thread':<12} phase")
    for began, ended, name, thread in sorted(SPANS):
        cpu = 1000 * (CPU[ended] - CPU[began])
        print(f"{began - zero:8.3f}{ended - zero:8.3f}{1000 * (ended - began):9.1f}{cpu:9.1f}  "
              f"{thread[:12]:<12} {name}")  # fmt: skip
    print(f"job (run.json written → ranking.json's finished_at): {finished - zero:.3f} s")
    first = min(start for start, _, name, _ in SPANS if name == "start_batch")
    last = max(start for start, _, name, _ in SPANS if name == "_decide")
    for what, began, ended in (
        ("head (run.json written → start_batch)", zero, first),
        ("tail (the last _decide → finished_at)", last, finished),
    ):
        cpu = CPU[ended] - CPU[began]
        print(f"{what}: {ended - began:.3f} s, the rank process's CPU {cpu:.3f} s")


if __name__ == "__main__":  # the chain process imports this module again: run nothing then
    main()
