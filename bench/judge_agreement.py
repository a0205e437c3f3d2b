"""Do bundled answers agree with one-comparison calls? The evidence for a safe bundle size.

Run: python bench/judge_agreement.py --base-url URL --model M --essays DIR
         [--provider openai|anthropic] [--pairs 40]
         [--layouts single,bundle:5,bundle:10,bundle:25,pool:6,pool:10]

The same pairs of essays are judged in every *layout* (how comparisons are grouped into
provider calls and laid out in the prompt): one comparison per call (``single``, judged
twice: the reference and its repeat), bundles of 5, 10 and 25 comparisons, and the ``pool``
prompt layout (``CJLLM_BUNDLE_LAYOUT=pool``) with calls of at most 6 or 10 distinct essays,
each sent once and named by reference from several comparisons; every layout in both orders
(A/B and B/A, in separate calls). Calls go through the project's own adapters (official
``anthropic`` / ``openai`` SDKs), with the same judge instructions, bundle formats and answer
checking as ``cjllm rank``. Printed per
layout: calls, answered share, agreement with the single calls (same pair, same order), the
agreement of two single passes (how consistent the judge is with itself at all), position
consistency (the same essay wins in both orders), the share Essay A won, and tokens per
comparison. The recommendation is the largest bundle size whose agreement with single calls
is within ``--tolerance`` of the singles' own repeat agreement and that answered at least
98% of its items: set ``CJLLM_MAX_ITEMS_PER_CALL`` to it for that model. For the pool
layout it says at which group sizes pooled verdicts kept the same agreement.

Layouts are a registry (``LAYOUTS``): a name, the prompt layout, and a function grouping the
items of a pass into calls given a size; a new layout is one more entry.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cjllm.cj.prompts import shared_blocks
from cjllm.contracts import BundleLayout, PromptBlock
from cjllm.essays import Essay, load_essays
from cjllm.preflight import DEFAULT_INSTRUCTIONS
from cjllm.provider.adapters import make_adapter
from cjllm.provider.calls import BundleCall, BundleItem, LLMAdapter, ProviderCallError, SharedBlock
from cjllm.settings import ProviderSettings

Pair = tuple[int, int]  # essay indexes, (first shown as Essay A in order "AB")
Item = tuple[int, str]  # (pair index, order "AB" or "BA")
Grouping = Callable[[list[Item], int, Sequence[Pair]], list[list[Item]]]


def single(items: list[Item], _size: int, _pairs: Sequence[Pair]) -> list[list[Item]]:
    """One comparison per call."""
    return [[item] for item in items]


def bundle(items: list[Item], size: int, _pairs: Sequence[Pair]) -> list[list[Item]]:
    """Consecutive groups of ``size`` comparisons per call (items come shuffled)."""
    return [items[k : k + size] for k in range(0, len(items), size)]


def pool(items: list[Item], size: int, pairs: Sequence[Pair]) -> list[list[Item]]:
    """Calls of at most ``size`` distinct essays holding as many comparisons as they can.

    Like the CJ service's grouped rounds (several comparisons among a few essays, one call),
    drawn from the bench's pairs: a call starts with the next item and keeps taking the
    item that adds the fewest essays it does not hold yet, while it holds at most ``size``.
    """
    if size < 2:
        raise SystemExit("pool:k needs k ≥ 2 essays per call")
    left = list(items)
    calls: list[list[Item]] = []
    while left:
        call = [left.pop(0)]
        essays = set(pairs[call[0][0]])
        while left:
            added, at = min((len(set(pairs[k]) - essays), i) for i, (k, _) in enumerate(left))
            if len(essays) + added > size:
                break
            call.append(left.pop(at))
            essays.update(pairs[call[-1][0]])
        calls.append(call)
    return calls


@dataclass(frozen=True)
class Layout:
    """How a pass groups its comparisons into calls, and how a call lays them out."""

    group: Grouping
    prompt: BundleLayout = BundleLayout.ITEMS


LAYOUTS: dict[str, Layout] = {
    "single": Layout(single),
    "bundle": Layout(bundle),  # bundle:N — N comparisons per call
    "pool": Layout(pool, BundleLayout.POOL),  # pool:k — at most k essays per call, each once
}


@dataclass
class Pass:
    """One layout's judgements: winner essay index per (pair, order), None if unanswered."""

    label: str
    pairs: Sequence[Pair]
    winners: dict[Item, int | None] = field(default_factory=dict)
    calls: int = 0
    failed_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class Bench:
    adapter: LLMAdapter
    provider: str
    model: str
    essays: list[Essay]
    pairs: list[Pair]
    system: tuple[SharedBlock, ...]
    shared: tuple[SharedBlock, ...]
    concurrency: int
    temperature: float | None


def parse_layout(spec: str) -> tuple[str, Layout, int]:
    name, _, size = spec.partition(":")
    if name not in LAYOUTS:
        raise SystemExit(f"unknown layout {spec!r}; known: {', '.join(LAYOUTS)} (e.g. bundle:10)")
    return spec, LAYOUTS[name], int(size) if size else 1


def choose_pairs(n_essays: int, count: int, seed: int) -> list[Pair]:
    """``count`` distinct unordered pairs, each with a random first essay."""
    rng = random.Random(seed)
    every = [(a, b) for a in range(n_essays) for b in range(a + 1, n_essays)]
    chosen = rng.sample(every, min(count, len(every)))
    return [(a, b) if rng.random() < 0.5 else (b, a) for a, b in chosen]


async def judge(bench: Bench, label: str, layout: Layout, size: int, seed: int) -> Pass:
    """Judge every pair in both orders with ``layout`` (orders in separate calls)."""
    result = Pass(label, bench.pairs)
    rng = random.Random(f"{seed}:{label}")
    gate = asyncio.Semaphore(bench.concurrency)
    groups: list[list[Item]] = []
    for order in ("AB", "BA"):
        items: list[Item] = [(k, order) for k in range(len(bench.pairs))]
        rng.shuffle(items)
        groups += layout.group(items, size, bench.pairs)

    async def call(number: int, group: list[Item]) -> None:
        ids = {f"{label}-{number}-{k}-{order}": (k, order) for k, order in group}
        parts = []
        for custom_id, (k, order) in ids.items():
            a, b = bench.pairs[k] if order == "AB" else bench.pairs[k][::-1]
            texts = (bench.essays[a].text, bench.essays[b].text)
            parts.append(BundleItem(custom_id, texts))
        request = BundleCall(
            bundle_id=f"{label}-{number}",
            provider=bench.provider,
            model=bench.model,
            system=bench.system,
            shared=bench.shared,
            items=tuple(parts),
            temperature=bench.temperature,
            layout=layout.prompt,
        )
        async with gate:
            try:
                outcome = await bench.adapter.call_bundle(request)
            except ProviderCallError as exc:
                print(f"  {label}: call {number} failed: {exc}", file=sys.stderr)
                result.failed_calls += 1
                for item in ids.values():
                    result.winners[item] = None
                return
        result.calls += 1
        result.input_tokens += outcome.usage.prompt_tokens
        result.output_tokens += outcome.usage.output_tokens
        for custom_id, (k, order) in ids.items():
            answer = outcome.reconciled.answers.get(custom_id)
            if answer is None:
                result.winners[(k, order)] = None
                continue
            a, b = bench.pairs[k] if order == "AB" else bench.pairs[k][::-1]
            result.winners[(k, order)] = a if answer.winner == "Essay A" else b

    start = time.perf_counter()
    await asyncio.gather(*(call(i, g) for i, g in enumerate(groups)))
    result.seconds = time.perf_counter() - start
    return result


def share(hits: int, total: int) -> float | None:
    return hits / total if total else None


def agreement(one: Pass, other: Pass) -> float | None:
    """Share of (pair, order) judgements both passes answered that chose the same essay."""
    both = [k for k, w in one.winners.items() if w is not None and other.winners.get(k) is not None]
    return share(sum(one.winners[k] == other.winners[k] for k in both), len(both))


def consistency(p: Pass) -> float | None:
    """Share of pairs answered in both orders whose winner is the same essay."""
    ab, ba = ({k: w for (k, o), w in p.winners.items() if o == x} for x in ("AB", "BA"))
    both = [k for k, w in ab.items() if w is not None and ba.get(k) is not None]
    return share(sum(ab[k] == ba[k] for k in both), len(both))


def shown_first(p: Pass, item: Item) -> int:
    k, order = item
    return p.pairs[k][0] if order == "AB" else p.pairs[k][1]


def essay_a_share(p: Pass) -> float | None:
    answered = [item for item, w in p.winners.items() if w is not None]
    return share(sum(p.winners[i] == shown_first(p, i) for i in answered), len(answered))


def fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def report(
    passes: list[Pass], specs: dict[str, tuple[str, int]], repeat: Pass | None, tolerance: float
) -> str:
    """The table, and the sizes that kept agreement (``specs``: label → layout name, size)."""
    reference = passes[0]
    baseline = agreement(reference, repeat) if repeat is not None else None
    lines = [
        f"{len(reference.pairs)} pairs, each judged in both orders; agreement is with the "
        "single-call pass (same pair, same order)",
        f"{'layout':<12}{'calls':>7}{'answered':>10}{'agree w/ single':>17}"
        f"{'position consistency':>22}{'Essay A won':>13}{'tokens/comparison':>19}",
    ]
    rows: list[tuple[str, Pass, float | None]] = [(reference.label, reference, None)]
    if repeat is not None:
        rows.append(("single again", repeat, baseline))
    rows += [(p.label, p, agreement(p, reference)) for p in passes[1:]]
    for label, p, agree in rows:
        total = len(p.winners)
        answered = share(sum(w is not None for w in p.winners.values()), total)
        tokens = (p.input_tokens + p.output_tokens) / total if total else 0.0
        lines.append(
            f"{label:<12}{p.calls:>7}{fmt(answered):>10}{fmt(agree):>17}"
            f"{fmt(consistency(p)):>22}{fmt(essay_a_share(p)):>13}"
            f"{tokens:>19.0f}"
        )
    kept = {
        p.label
        for p in passes[1:]
        if (agree := agreement(p, reference)) is not None
        and (baseline is None or agree >= baseline - tolerance)
        and sum(w is not None for w in p.winners.values()) >= 0.98 * len(p.winners)
    }
    if baseline is not None:
        lines.append(f"single calls agree with themselves on {baseline:.0%} of judgements")
    bundles = {label: size for label, (name, size) in specs.items() if name == "bundle"}
    if bundles:
        safe = [size for label, size in bundles.items() if label in kept]
        lines.append(
            f"recommended CJLLM_MAX_ITEMS_PER_CALL: {max(safe)}"
            if safe
            else "recommended CJLLM_MAX_ITEMS_PER_CALL: 1 (no bundle size kept agreement)"
        )
    pools = {label: size for label, (name, size) in specs.items() if name == "pool"}
    if pools:
        held = [str(size) for label, size in pools.items() if label in kept]
        lost = [str(size) for label, size in pools.items() if label not in kept]
        verdict = "did not keep agreement at any group size: keep the items layout"
        if held:
            verdict = f"kept agreement at CJLLM_POOL_GROUP_SIZE = {', '.join(held)}"
            verdict += f"; not at {', '.join(lost)}" if lost else ""
        lines.append(f"pool layout (CJLLM_BUNDLE_LAYOUT=pool) {verdict}")
    return "\n".join(lines)


async def measure(args: argparse.Namespace, essays: list[Essay], blocks: list[PromptBlock]) -> str:
    if len(essays) < 2:
        raise SystemExit(f"{args.essays}: need at least two essays")
    env = "ANTHROPIC" if args.provider == "anthropic" else "OPENAI"
    os.environ[f"{env}_BASE_URL"] = args.base_url
    if args.api_key:
        os.environ[f"{env}_API_KEY"] = args.api_key
    settings = ProviderSettings(call_timeout_seconds=args.timeout)
    adapter = make_adapter(args.provider, settings)
    pairs = choose_pairs(len(essays), args.pairs, args.seed)
    bench = Bench(
        adapter=adapter,
        provider=args.provider,
        model=args.model,
        essays=essays,
        pairs=pairs,
        system=tuple(SharedBlock(b.content, b.cacheable) for b in blocks if b.target == "system"),
        shared=tuple(SharedBlock(b.content, True) for b in blocks if b.target != "system"),
        concurrency=args.concurrency,
        temperature=args.temperature,
    )
    layouts = [parse_layout(spec) for spec in args.layouts.split(",")]
    if layouts[0][0] != "single":
        layouts.insert(0, parse_layout("single"))
    try:
        passes = [await judge(bench, label, fn, size, args.seed) for label, fn, size in layouts]
        repeat = None
        if not args.no_repeat:
            repeat = await judge(bench, "single-2", LAYOUTS["single"], 1, args.seed)
            repeat.label = "single again"
    finally:
        await adapter.aclose()
    specs = {label: (label.partition(":")[0], size) for label, _, size in layouts}
    header = f"{args.provider} model {args.model} at {args.base_url}"
    return header + "\n" + report(passes, specs, repeat, args.tolerance)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base-url", required=True, help="the endpoint (OpenAI: …/v1)")
    p.add_argument("--model", required=True)
    p.add_argument("--essays", required=True, help="a folder of .txt/.md, or a CSV/JSONL file")
    p.add_argument("--provider", choices=("openai", "anthropic"), default="openai")
    p.add_argument("--api-key", help="else OPENAI_API_KEY / ANTHROPIC_API_KEY")
    p.add_argument("--instructions", help="assignment file (default: the generic one)")
    p.add_argument("--rubric", help="rubric file")
    p.add_argument("--pairs", type=int, default=40)
    p.add_argument("--layouts", default="single,bundle:5,bundle:10,bundle:25,pool:6,pool:10")
    p.add_argument("--no-repeat", action="store_true", help="skip the second single pass")
    p.add_argument("--tolerance", type=float, default=0.05)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: Sequence[str] | None = None) -> str:
    args = parser().parse_args(argv)
    instructions = DEFAULT_INSTRUCTIONS
    if args.instructions:
        instructions = Path(args.instructions).read_text(encoding="utf-8")
    rubric = Path(args.rubric).read_text(encoding="utf-8") if args.rubric else None
    blocks = shared_blocks(instructions, rubric)
    text = asyncio.run(measure(args, load_essays(Path(args.essays)), blocks))
    print(text)
    return text


if __name__ == "__main__":
    main()
