"""Input tokens and cost per comparison: per_request, serial_round, and serial_round + pool.

Run: python bench/tokens.py

The same CJ batch — 40 synthetic essays of about 500 tokens, judge instructions + assignment
+ rubric of about 1,400 tokens as the cacheable shared prefix, a budget of 200 comparisons —
runs through the whole embedded pipeline (CJ service, provider service, SQLite queue, the
official ``anthropic`` SDK adapter) against ``cjllm sim`` (which counts tokens and serves
Anthropic-style prompt caching), once per strategy:

- ``per_request``: one call per comparison;
- ``serial_round``: one bundle per round, every item with its own Essay A and Essay B;
- ``serial_round`` + ``pool`` at k = 6, 10, 16 (``CJLLM_BUNDLE_LAYOUT=pool``): rounds planned
  as groups of k essays, one bundle per group, every distinct essay once per call.

Every run spends the whole budget (no early stop) and ``CJLLM_MAX_ITEMS_PER_CALL`` is 50, so a
round (or a group) is one call. Prints per comparison: input tokens uncached (billed at the
full rate), cache writes, cache reads, all input, output, and cost at the packaged price of
the model; and the ratios, all from this one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx
from bundling_sim import simulator  # bench/bundling_sim.py, beside this script

from cjllm.cj.prompts import shared_blocks
from cjllm.cj.workflow import EssayInput
from cjllm.contracts import BatchingStrategy, BundleLayout
from cjllm.embedded import embedded_services
from cjllm.settings import CJSettings, ProviderSettings
from cjllm.sim.tokens import count_tokens

VOCABULARY = (
    "school start time sleep adolescent students teachers families buses evidence research "
    "morning health attendance grades community schedule district policy parents benefit "
    "cost argue because however therefore although moreover significant consider example "
    "clearly suggests important change later earlier hours routine sports jobs safety "
    "traffic study results improve reduce increase support oppose reasonable balance"
).split()

RUBRIC_LEVELS = [
    ("Position", "states a clear, arguable position early and holds it throughout"),
    ("Evidence", "supports each claim with relevant, specific and accurate evidence"),
    ("Reasoning", "explains how the evidence supports the claim, step by step"),
    ("Counter-argument", "states the strongest objection fairly and answers it"),
    ("Organisation", "paragraphs each do one job, in an order that builds the argument"),
    ("Style", "precise vocabulary, varied sentences, a register suited to the reader"),
    ("Conventions", "spelling, punctuation and grammar that never get in the way"),
]


@dataclass
class Run:
    label: str
    comparisons: int
    calls: int
    uncached: int
    cache_write: int
    cache_read: int
    output: int
    cost: float

    @property
    def input(self) -> int:
        return self.uncached + self.cache_write + self.cache_read

    def per(self, value: float) -> float:
        return value / self.comparisons


def essay_text(rng: random.Random, words: int) -> str:
    sentences, count = [], 0
    while count < words:
        n = rng.randint(8, 24)
        sentences.append(" ".join(rng.choices(VOCABULARY, k=n)).capitalize() + ".")
        count += n
    paragraphs = [" ".join(sentences[i : i + 5]) for i in range(0, len(sentences), 5)]
    return "\n\n".join(paragraphs)


def write_essays(folder: Path, n: int, seed: int) -> list[EssayInput]:
    """``n`` essays of about 500 tokens and a manifest with qualities."""
    rng = random.Random(seed)
    essays, entries = [], []
    for i in range(n):
        text = essay_text(rng, 240)
        (folder / f"e{i:02d}.txt").write_text(text, encoding="utf-8")
        entries.append(
            {"essay_id": f"e{i:02d}", "file": f"e{i:02d}.txt", "quality": rng.gauss(0, 2)}
        )
        essays.append(EssayInput(f"e{i:02d}", text))
    (folder / "manifest.json").write_text(json.dumps({"essays": entries}), encoding="utf-8")
    return essays


def rubric() -> str:
    lines = ["Assessment criteria. Judge the essay as a whole, weighing these strands:"]
    for name, top in RUBRIC_LEVELS:
        lines.append(
            f"- {name}. Strong: {top}. Adequate: does this in most places, with lapses that "
            f"do not undermine the argument. Weak: does this rarely or not at all, so that "
            f"the reader must work to follow the essay or is left unconvinced."
        )
    lines.append(
        "Weigh the strands together; a strong argument with minor slips in conventions beats "
        "a tidy essay that never commits to a position. Length is not a strand."
    )
    return "\n".join(lines) * 2


async def run(
    label: str,
    sim: str,
    essays: list[EssayInput],
    args: argparse.Namespace,
    workdir: Path,
    *,
    strategy: BatchingStrategy,
    layout: BundleLayout = BundleLayout.ITEMS,
    group_size: int = 10,
) -> Run:
    async with httpx.AsyncClient(base_url=sim) as control:
        (await control.post("/sim/reset")).raise_for_status()
    provider = ProviderSettings(
        max_items_per_call=50,
        linger_seconds=args.linger,
        poll_interval_seconds=0.01,
        worker_concurrency=4,
    )
    cj = CJSettings(
        llm_provider="anthropic",
        llm_batching_strategy=strategy,
        max_concurrent_comparisons=50,
        comparisons_per_essay=2 * args.budget / len(essays),
        max_comparisons_total=args.budget,
        target_reliability=2.0,  # never reached: every strategy spends the whole budget
        bundle_layout=layout,
        pool_group_size=group_size,
        split_half_splits=2,
    )
    out = workdir / label.replace(" ", "_")
    out.mkdir()
    async with embedded_services(out, provider, cj) as services:
        batch_id = await services.cj.start_batch(essays, instructions=ASSIGNMENT, rubric=rubric())
        result = await services.cj.wait_for_completion(batch_id, timeout=3600)
        progress = await services.cj.progress(batch_id)
    if result.status != "completed":
        raise RuntimeError(f"{label}: the batch ended {result.status}: {result.message}")
    async with httpx.AsyncClient(base_url=sim) as control:
        counters = (await control.get("/sim/counters")).json()
    tokens = counters["tokens"]
    return Run(
        label,
        result.comparisons_requested,
        counters["calls"],
        tokens["input"],
        tokens["cache_creation"],
        tokens["cache_read"],
        tokens["output"],
        progress.cost_estimate,
    )


ASSIGNMENT = (
    "Should schools start later in the morning? Write an argumentative essay of about 400 "
    "words that takes a position and supports it with evidence."
)


async def measure(args: argparse.Namespace, sim: str, essays: list[EssayInput]) -> list[Run]:
    runs = []
    with tempfile.TemporaryDirectory(prefix="cjllm-tokens-") as tmp:
        work = Path(tmp)
        runs.append(
            await run("per_request", sim, essays, args, work, strategy=BatchingStrategy.PER_REQUEST)
        )
        runs.append(
            await run(
                "serial_round", sim, essays, args, work, strategy=BatchingStrategy.SERIAL_ROUND
            )
        )
        for k in args.k:
            runs.append(
                await run(
                    f"serial_round + pool k={k}",
                    sim,
                    essays,
                    args,
                    work,
                    strategy=BatchingStrategy.SERIAL_ROUND,
                    layout=BundleLayout.POOL,
                    group_size=k,
                )
            )
    return runs


def report(runs: list[Run], args: argparse.Namespace, essays: list[EssayInput]) -> None:
    base, serial = runs[0], runs[1]
    essay_tokens = sum(count_tokens(e.text) for e in essays) / len(essays)
    prefix = shared_blocks(ASSIGNMENT, rubric())
    prefix_tokens = sum(count_tokens(b.content) for b in prefix)
    print(
        f"{args.essays} essays of {essay_tokens:.0f} tokens on average, shared prefix "
        f"{prefix_tokens:,} tokens, budget {args.budget} comparisons; the anthropic SDK "
        f"adapter against cjllm sim ({ProviderSettings().anthropic_model} prices)"
    )
    head = (
        f"{'strategy':<26}{'calls':>6}{'uncached':>10}{'cache wr':>10}{'cache rd':>10}"
        f"{'input':>8}{'output':>8}{'cost $':>10}{'cost/base':>10}{'uncached/serial':>16}"
    )
    print("per comparison:")
    print(head)
    for r in runs:
        print(
            f"{r.label:<26}{r.calls:>6}{r.per(r.uncached):>10.0f}{r.per(r.cache_write):>10.0f}"
            f"{r.per(r.cache_read):>10.0f}{r.per(r.input):>8.0f}{r.per(r.output):>8.0f}"
            f"{r.per(r.cost):>10.5f}{r.cost / base.cost * base.comparisons / r.comparisons:>10.2f}"
            f"{r.per(r.uncached) / serial.per(serial.uncached):>16.2f}"
        )
    pooled = runs[2:]
    worst = max(r.per(r.uncached) / serial.per(serial.uncached) for r in pooled)
    verdict = "meets" if worst <= 1 / 3 else "MISSES"
    print(f"pool layout, worst k: {worst:.2f} of serial_round's uncached input ({verdict} <= 1/3)")


def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="cjllm-essays-") as folder:
        essays = write_essays(Path(folder), args.essays, args.seed)
        with simulator(Path(folder) / "manifest.json") as sim:
            runs = asyncio.run(measure(args, sim, essays))
    report(runs, args, essays)
    if any(r.comparisons != args.budget for r in runs):
        sys.exit("not every run spent the same budget")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--essays", type=int, default=40)
    parser.add_argument("--budget", type=int, default=200, help="comparisons per run")
    parser.add_argument("--k", type=int, nargs="+", default=[6, 10, 16], help="group sizes")
    parser.add_argument("--linger", type=float, default=0.25, help="linger_seconds")
    parser.add_argument("--seed", type=int, default=7, help="seed of the synthetic essays")
    main(parser.parse_args())
