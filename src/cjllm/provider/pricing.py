"""What a provider call costs: a small, dated price table per model, overridable.

The packaged table (``prices.json``, next to this module) holds indicative list prices in
USD per million tokens as of the date it states. ``CJLLM_PRICE_TABLE_PATH`` names a JSON
file of the same shape whose models replace or add to the packaged ones, so prices can be
corrected without a release. A model is found by its exact name or, failing that, by the
longest table name it extends with ``-`` (``claude-sonnet-4-5-20250929`` is priced as
``claude-sonnet-4-5``). A model the table does not know costs nothing and is reported as
unpriced (local OpenAI-compatible servers, for instance), never guessed.

A call's cost is ``input × input price + output × output price + cache writes × cache
write price (by TTL) + cache reads × cache read price``. A line of a provider batch job
(Anthropic Message Batches, OpenAI Batch API) costs that times the table's
``batch_multiplier`` (0.5: both vendors bill batch tokens, cache writes and reads included,
at half price). How a call's usage and cost are charged to its comparisons is
:func:`cjllm.provider.bundling.apportion`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from cjllm.provider.calls import CallUsage

PER_TOKENS = 1_000_000
BATCH_MULTIPLIER = 0.5
_FIELDS = ("input", "output", "cache_read", "cache_write_5m", "cache_write_1h")


class PriceTableError(ValueError):
    """A price table file that cannot be used, naming the file and the bad entry."""


@dataclass(frozen=True)
class ModelPrice:
    """USD per million tokens. Cache writes default to the input price (OpenAI bills them so)."""

    input: float
    output: float
    cache_read: float
    cache_write_5m: float
    cache_write_1h: float


@dataclass(frozen=True)
class CallCost:
    """A call's cost in USD, by kind of token; ``priced`` is False for a model not in the table."""

    input: float = 0.0
    output: float = 0.0
    cache_write: float = 0.0
    cache_read: float = 0.0
    priced: bool = True

    @property
    def total(self) -> float:
        return self.input + self.output + self.cache_write + self.cache_read


@dataclass(frozen=True)
class PriceTable:
    as_of: str
    models: Mapping[str, ModelPrice]
    sources: tuple[str, ...] = ()
    batch_multiplier: float = BATCH_MULTIPLIER

    def price_for(self, model: str) -> ModelPrice | None:
        """The model's prices: exact name, else the longest table name it extends with ``-``."""
        if model in self.models:
            return self.models[model]
        matches = [name for name in self.models if model.startswith(name + "-")]
        return self.models[max(matches, key=len)] if matches else None

    def cost(
        self,
        model: str,
        usage: CallUsage,
        *,
        cache_write_1h_tokens: int = 0,
        batch: bool = False,
    ) -> CallCost:
        """Price one call. ``cache_write_1h_tokens`` is the part of the cache writes made with
        a one-hour TTL (Anthropic reports it); the rest are priced as five-minute writes.
        ``batch``: the call was a line of a provider batch job (``batch_multiplier`` applies)."""
        price = self.price_for(model)
        if price is None:
            return CallCost(priced=False)
        long_writes = min(cache_write_1h_tokens, usage.cache_creation_input_tokens)
        short_writes = usage.cache_creation_input_tokens - long_writes
        scale = (self.batch_multiplier if batch else 1.0) / PER_TOKENS
        return CallCost(
            input=usage.input_tokens * price.input * scale,
            output=usage.output_tokens * price.output * scale,
            cache_write=(short_writes * price.cache_write_5m + long_writes * price.cache_write_1h)
            * scale,
            cache_read=usage.cache_read_input_tokens * price.cache_read * scale,
        )


def _model_price(source: str, model: str, entry: Any) -> ModelPrice:
    if not isinstance(entry, dict):
        raise PriceTableError(f"{source}: model {model!r} must map to an object of prices")
    unknown = sorted(set(entry) - set(_FIELDS))
    if unknown:
        raise PriceTableError(
            f"{source}: model {model!r} has unknown price field(s) {', '.join(unknown)}; "
            f"known: {', '.join(_FIELDS)}"
        )
    values: dict[str, float] = {}
    for name in _FIELDS:
        value = entry.get(name)
        if value is None:
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise PriceTableError(f"{source}: {model}.{name} must be a number, got {value!r}")
        if value < 0:
            raise PriceTableError(f"{source}: {model}.{name} must not be negative")
        values[name] = float(value)
    for name in ("input", "output"):
        if name not in values:
            raise PriceTableError(f"{source}: model {model!r} needs an {name!r} price")
    write_5m = values.get("cache_write_5m", values["input"])
    return ModelPrice(
        input=values["input"],
        output=values["output"],
        cache_read=values.get("cache_read", values["input"]),
        cache_write_5m=write_5m,
        cache_write_1h=values.get("cache_write_1h", write_5m),
    )


def _batch_multiplier(source: str, data: dict[str, Any]) -> float | None:
    value = data.get("batch_multiplier")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise PriceTableError(
            f"{source}: batch_multiplier must be a number in (0, 1], got {value!r}"
        )
    return float(value)


def parse_price_table(source: str, data: Any) -> PriceTable:
    """A table from its JSON form: ``{"as_of": "YYYY-MM-DD", "models": {name: {...}}}``
    and, optionally, ``"batch_multiplier"`` (default 0.5)."""
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise PriceTableError(f'{source}: expected an object with a "models" object')
    as_of = data.get("as_of")
    if not isinstance(as_of, str) or not as_of:
        raise PriceTableError(f'{source}: "as_of" (the date the prices were taken) is required')
    models = {name: _model_price(source, name, entry) for name, entry in data["models"].items()}
    multiplier = _batch_multiplier(source, data)
    return PriceTable(
        as_of=as_of,
        models=models,
        sources=(source,),
        batch_multiplier=BATCH_MULTIPLIER if multiplier is None else multiplier,
    )


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PriceTableError(f"{path}: cannot read the price table ({exc.strerror})") from exc
    except json.JSONDecodeError as exc:
        raise PriceTableError(f"{path}: not valid JSON ({exc})") from exc


def packaged_price_table() -> PriceTable:
    text = resources.files("cjllm.provider").joinpath("prices.json").read_text(encoding="utf-8")
    return parse_price_table("cjllm/provider/prices.json", json.loads(text))


def load_price_table(override_path: str | Path | None = None) -> PriceTable:
    """The packaged table, with the models of ``override_path`` (if given) replacing or adding
    to it; ``as_of`` is the override's date when there is one, and so is its
    ``batch_multiplier`` when it sets one."""
    table = packaged_price_table()
    if override_path is None:
        return table
    path = Path(override_path)
    data = _read(path)
    override = parse_price_table(str(path), data)
    multiplier = _batch_multiplier(str(path), data)
    return PriceTable(
        as_of=override.as_of,
        models={**table.models, **override.models},
        sources=(*table.sources, *override.sources),
        batch_multiplier=table.batch_multiplier if multiplier is None else multiplier,
    )
