"""What sending a round costs the rank process: the CJ service's submission path alone.

Run: python bench/submit_path.py [--rounds 3] [--size 5000] [--repeats 2] [--baseline OLD/src]

Rounds of ``size`` comparisons (essays of ~500 words, the CJ prompt's shared prefix) go
through ``cj.rounds.submit`` → the embedded direct hop → the provider's intake → the SQLite
queue in a fresh folder, with no worker (nothing is claimed) and the CJ database's
``mark_submitted`` left out: the CPU seconds of this process (its SQLite thread included) per
comparison, and the seconds the garbage collector ran. ``--baseline DIR``: the same, run
alternately with the package imported from DIR (``git archive <commit> src | tar -x -C
/tmp/old``), and the ratio printed.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


class _Store:
    """The two calls ``rounds.submit`` makes on the CJ store (the CJ database is not measured)."""

    def __init__(self) -> None:
        self.submitted = 0

    async def mark_submitted(self, pairs: Sequence[Any]) -> None:
        self.submitted += len(pairs)

    async def fail_pending(self, *args: Any) -> None:
        raise AssertionError(f"a comparison was refused: {args}")


def gc_timer() -> tuple[dict[str, float], Callable[[str, dict[str, int]], None]]:
    """A ``gc.callbacks`` entry and the dict where it adds up the collector's seconds
    (``spent["gc"]``)."""
    spent = {"gc": 0.0, "started": 0.0}

    def timed(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            spent["started"] = time.perf_counter()
        else:
            spent["gc"] += time.perf_counter() - spent["started"]

    return spent, timed


def essay_texts(n: int, rng: random.Random) -> dict[str, str]:
    """``n`` essays of 500 common words."""
    words = "the of and to a in that is was he for it with as his on be at by".split()
    return {f"e{i}": " ".join(rng.choice(words) for _ in range(500)) for i in range(n)}


def round_job(provider: Any, texts: dict[str, str]) -> tuple[Any, Any]:
    """The provider client and the round's :class:`~cjllm.cj.rounds.Submission` as the CJ
    service builds them (the CJ prompt's shared prefix, bundles of 25)."""
    from cjllm.cj import rounds
    from cjllm.cj.llm_client import ProviderClient
    from cjllm.cj.options import BatchOptions
    from cjllm.cj.records import BatchRecord
    from cjllm.cj.tables import BatchStatus
    from cjllm.embedded import direct_to
    from cjllm.settings import CJSettings

    client = ProviderClient.from_settings(CJSettings(), direct=direct_to(provider))
    batch = BatchRecord(
        "b1", None, BatchStatus.RUNNING, "serial_round", "mock", None, None,
        "Write an essay about a place you know well. " * 12,
        "Content, organisation, language. " * 8,
        None, {}, 0, None, None, None, False, datetime.now(UTC), None,
    )  # fmt: skip
    return client, rounds.Submission(batch, BatchOptions(), texts, 25, "cj.callbacks")


def round_rows(texts: dict[str, str], number: int, size: int, rng: random.Random) -> list[Any]:
    """``size`` comparisons of a round: each essay at most once."""
    from cjllm.cj.records import PendingComparison

    ids = list(texts)
    rng.shuffle(ids)
    return [
        PendingComparison(uuid.uuid4(), ids[2 * k], ids[2 * k + 1], number) for k in range(size)
    ]


async def measure(rounds_: int, size: int) -> dict[str, float]:
    from cjllm.cj import rounds
    from cjllm.embedded import DirectBus, EmbeddedPaths
    from cjllm.provider.service import embedded_provider
    from cjllm.settings import ProviderSettings

    rng = random.Random(1)
    texts = essay_texts(2 * size, rng)
    spent, timed = gc_timer()
    settings = EmbeddedPaths(Path(tempfile.mkdtemp())).provider_settings(ProviderSettings())
    bus = DirectBus()
    await bus.start()
    cpu = 0.0
    async with embedded_provider(settings, bus=bus, work=False) as provider:
        client, job = round_job(provider, texts)
        store = _Store()
        gc.callbacks.append(timed)
        for number in range(1, rounds_ + 1):
            rows = round_rows(texts, number, size, rng)
            before = time.process_time()
            await rounds.submit(store, client, job, rows)  # type: ignore[arg-type]
            cpu += time.process_time() - before
        gc.callbacks.remove(timed)
        assert store.submitted == rounds_ * size
    await bus.stop()
    n = rounds_ * size
    return {"us_per_cmp": 1e6 * cpu / n, "gc_us_per_cmp": 1e6 * spent["gc"] / n}


def run_elsewhere(script: str, src: str | None, rounds_: int, size: int) -> dict[str, float]:
    """``script --one`` in a child process, the package imported from ``src`` (None: this
    checkout's); its last line of output, as JSON."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = src
    out = subprocess.run(
        [sys.executable, script, "--one", "--rounds", str(rounds_), "--size", str(size)],
        env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def side_by_side(
    script: str, args: argparse.Namespace, key: str, show: Callable[[dict[str, float]], str]
) -> None:
    """Run ``script`` ``args.repeats`` times with this checkout, alternating with
    ``args.baseline`` when given (the order flipped every other repeat), printing ``show`` of
    each result and the ratio of the means of ``key``."""
    codes = [("baseline", args.baseline), ("this", None)] if args.baseline else [("this", None)]
    totals: dict[str, list[float]] = {name: [] for name, _ in codes}
    for repeat in range(args.repeats):
        for name, src in codes if repeat % 2 == 0 else codes[::-1]:
            r = run_elsewhere(script, src, args.rounds, args.size)
            totals[name].append(r[key])
            print(f"{name:>9} {show(r)}", flush=True)
    if args.baseline:
        base, this = (sum(totals[k]) / len(totals[k]) for k in ("baseline", "this"))
        print(f"mean: baseline {base:.0f}, this {this:.0f}, this / baseline {this / base:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--baseline", default=None)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(asyncio.run(measure(args.rounds, args.size))))
        return
    print(f"{args.rounds} rounds of {args.size} comparisons; CPU µs per comparison (GC µs)")
    side_by_side(
        __file__, args, "us_per_cmp", lambda r: f"{r['us_per_cmp']:7.0f} ({r['gc_us_per_cmp']:.0f})"
    )


if __name__ == "__main__":
    main()
