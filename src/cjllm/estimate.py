"""``cjllm rank --estimate``: what a run would ask of the provider, before it asks anything.

From the checked inputs and the run's settings, without calling the LLM (nor needing its
credentials): the planned comparisons (the budget, an upper bound — a run may stop earlier
on its reliability target), the rounds and provider calls the strategy makes of them, the
input and output tokens, the cost at list and at batch prices, and how long the provider's
rate limits alone make the run take.

How the figures are made:
- Rounds: :func:`cjllm.cj.rounds.round_size` comparisons each (every essay once, within the
  budget left and ``MAX_CONCURRENT_COMPARISONS``; fewer and larger with the batch-job
  strategies), as the CJ service plans them. Calls per round: one per ``bundle`` of the
  strategy (``serial_round``'s preferred bundle size, ``--bundle-size`` for
  ``serial_override``, one for ``per_request``), split by the provider's caps
  (``CJLLM_MAX_ITEMS_PER_CALL``, ``CJLLM_MAX_INPUT_TOKENS_PER_CALL``); with ``async_batch`` /
  ``nightly_batch`` a "call" is a batch-job line (``CJLLM_BATCH_ITEMS_PER_LINE`` comparisons
  at most); with ``CJLLM_BUNDLE_LAYOUT=pool``, one per group of the round
  (:mod:`cjllm.cj.groups`), which sends each of its essays once and one short line per
  comparison.
- Input tokens: the real prompt text — judge instructions, assignment, rubric, bundle
  instructions once per call, and per comparison the item fences and two essays of average
  length — counted as characters ÷ 4 (as the simulated provider counts; real tokenizers
  differ by roughly ±20% on English prose). Prompt-cache savings are not subtracted.
- Output tokens: :data:`OUTPUT_TOKENS_PER_COMPARISON` per comparison (the JSON entry and a
  justification of at most 50 words), never more than ``CJLLM_MAX_OUTPUT_TOKENS_PER_ITEM``.
- Cost: the dated price table (:mod:`cjllm.provider.pricing`); batch price = list × the
  table's ``batch_multiplier`` (0.5, the discount both vendors give their batch APIs). A
  model not in the table is unpriced.
- Time: :func:`cjllm.provider.rate_limits.estimate_minutes` over the limits configured for
  the provider and model (``CJLLM_RATE_LIMITS``): a lower bound — latency and retries only
  add to it. Without configured limits it is unknown (a run learns them from the
  provider's headers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cjllm.cj.options import BatchOptions
from cjllm.cj.prompts import shared_blocks
from cjllm.cj.rounds import round_size
from cjllm.preflight import Checked, RankInputs
from cjllm.provider.calls import BundleItem
from cjllm.provider.pricing import load_price_table
from cjllm.provider.prompts import render_items, render_pool
from cjllm.provider.rate_limits import configured_limits, estimate_minutes
from cjllm.settings import CJSettings, ProviderSettings
from cjllm.strategies import BATCH_JOB_STRATEGIES

CHARS_PER_TOKEN = 4
OUTPUT_TOKENS_PER_COMPARISON = 110
_ID = "00000000-0000-0000-0000-000000000000"  # a custom_id's length


@dataclass(frozen=True)
class Estimate:
    provider: str
    model: str
    strategy: str
    essays: int
    comparisons: int
    rounds: int
    provider_calls: int
    input_tokens: int
    output_tokens: int
    list_cost: float | None  # None: the model is not in the price table
    batch_cost: float | None
    prices_as_of: str
    rate_limit_minutes: float | None = None  # None: no limits configured for this judge

    def lines(self) -> list[str]:
        def usd(value: float | None) -> str:
            return "unpriced (model not in the price table)" if value is None else f"${value:,.2f}"

        free = self.provider == "mock"
        batch_job = self.strategy in BATCH_JOB_STRATEGIES
        return [
            f"Estimate for {self.essays} essays, judge {self.provider} / {self.model}, "
            f"strategy {self.strategy} (no LLM was called):",
            f"  comparisons     at most {self.comparisons:,} in {self.rounds:,} rounds",
            f"  provider calls  {self.provider_calls:,}",
            f"  input tokens    {self.input_tokens:,} (before prompt-cache savings)",
            f"  output tokens   {self.output_tokens:,}",
            "  cost            "
            + (
                "none: the simulated judge calls no LLM"
                if free
                else f"{usd(self.list_cost)} at list prices, {usd(self.batch_cost)} at batch "
                f"prices (price table of {self.prices_as_of})"
            ),
            "  time            "
            + (
                "no rate limits: the simulated judge answers at once"
                if free
                else f"one batch-job turnaround per round, each up to 24 hours ({self.rounds:,} "
                "rounds); the vendor's batch queue, not the rate limits, paces it"
                if batch_job
                else "unknown: no rate limits configured for this provider (CJLLM_RATE_LIMITS)"
                if self.rate_limit_minutes is None
                else f"at least {self.rate_limit_minutes:,.1f} minutes under the provider's "
                "rate limits (CJLLM_RATE_LIMITS; latency and retries add to it)"
            ),
        ]


def tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def estimate(
    inputs: RankInputs,
    provider: str,
    model: str,
    cj: CJSettings,
    provider_settings: ProviderSettings,
) -> Estimate:
    options = BatchOptions.from_settings(cj)
    texts = [e.text for e in (*inputs.essays, *inputs.anchors)]
    n = len(texts)
    budget = options.budget(n)
    mean_chars = sum(len(t) for t in texts) / n
    typical = "x" * round(mean_chars)
    prefix = sum(tokens(b.content) for b in shared_blocks(inputs.instructions, inputs.rubric))
    instructions, one_item = render_items([BundleItem(_ID, (typical, typical))], "0" * 16)
    per_item = tokens(one_item) + 1
    per_call = prefix + tokens(instructions)
    by_tokens = max(1, (provider_settings.max_input_tokens_per_call - per_call) // per_item)
    batch_job = options.batching_strategy in BATCH_JOB_STRATEGIES
    most = provider_settings.batch_items_per_line if batch_job else None
    cap = min(most or provider_settings.max_items_per_call, by_tokens)
    rounds, calls, left, pooled = 0, 0, budget, 0
    while left > 0:
        size = round_size(options, n, left)
        if size <= 0:
            break
        if options.plans_groups:  # cj/groups.py: one call per group, each essay once in it
            members = min(n, max(2, math.ceil(2 * size / options.pool_pairs_per_essay)))
            calls += math.ceil(members / options.pool_group_size)
            pooled += members
        elif batch_job:  # a round is one lane group: lines of CJLLM_BATCH_ITEMS_PER_LINE
            calls += math.ceil(size / cap)
        else:
            bundle = options.preferred_bundle_size(size)
            groups = math.ceil(size / min(bundle, size))
            calls += sum(math.ceil(g / cap) for g in _split(size, groups))
        rounds += 1
        left -= size
    output = budget * min(
        OUTPUT_TOKENS_PER_COMPARISON, provider_settings.max_output_tokens_per_item
    )
    input_tokens = calls * per_call + budget * per_item
    if options.plans_groups:
        item = BundleItem(_ID, (typical, typical))  # one text, named by every item
        pool_instructions, one_line = render_pool([item], "0" * 16)
        per_line = tokens(render_pool([item, item], "0" * 16)[1]) - tokens(one_line) + 1
        per_text = tokens(one_line) - per_line + 1
        per_call = prefix + tokens(pool_instructions)
        input_tokens = calls * per_call + pooled * per_text + budget * per_line
    table = load_price_table(provider_settings.price_table_path)
    price = table.price_for(model)
    list_cost = None
    if provider == "mock":
        list_cost = 0.0
    elif price is not None:
        list_cost = (input_tokens * price.input + output * price.output) / 1_000_000
    limits = configured_limits(provider_settings.rate_limits, provider, model)
    minutes = (
        estimate_minutes(limits, calls, input_tokens, output)
        if provider != "mock" and limits.known()
        else None
    )
    return Estimate(
        provider=provider,
        model=model,
        strategy=options.batching_strategy.value,
        essays=n,
        comparisons=budget,
        rounds=rounds,
        provider_calls=calls,
        input_tokens=input_tokens,
        output_tokens=output,
        list_cost=list_cost,
        batch_cost=None if list_cost is None else list_cost * table.batch_multiplier,
        prices_as_of=table.as_of,
        rate_limit_minutes=minutes,
    )


def _split(total: int, groups: int) -> list[int]:
    """``total`` items in ``groups`` bundles as even as the bundle size allows."""
    base, extra = divmod(total, groups)
    return [base + (1 if i < extra else 0) for i in range(groups)]


def default_model(provider: str, settings: ProviderSettings) -> str:
    return {
        "anthropic": settings.anthropic_model,
        "openai": settings.openai_model,
    }.get(provider, settings.mock_model)


def estimate_run(checked: Checked) -> Estimate:
    """The estimate for a checked ``cjllm rank`` request, with the settings it would run with."""
    from cjllm.rank import cj_settings_for, provider_settings_for

    request = checked.request
    psettings = provider_settings_for(request)
    model = request.model or default_model(checked.provider, psettings)
    cj = cj_settings_for(request, checked.provider, model)
    return estimate(checked.inputs, checked.provider, model, cj, psettings)
