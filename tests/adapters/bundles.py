"""Bundles for the adapter tests."""

from __future__ import annotations

from cjllm.provider.calls import BundleCall, BundleItem, SharedBlock

RUBRIC = (
    "Rubric. Judge the quality of argument: a clear position, relevant evidence, "
    "counter-arguments answered, and a conclusion that follows. "
) * 40  # long enough (~5000 characters) to pass the prompt caches' 1024-token minimum


def essay(n: int, words: int = 60) -> str:
    return f"Essay number {n}. " + " ".join(f"word{n}x{i}" for i in range(words)) + "."


def items(n: int, prefix: str = "item") -> tuple[BundleItem, ...]:
    return tuple(
        BundleItem(f"{prefix}-{i:03d}", (essay(2 * i), essay(2 * i + 1))) for i in range(n)
    )


def bundle(
    n: int = 3,
    *,
    shared: str | None = RUBRIC,
    system: str = "You are an experienced examiner comparing two student essays.",
    model: str = "",
    temperature: float | None = None,
    max_tokens: int | None = None,
    prefix: str = "item",
    ttl: str = "5m",
) -> BundleCall:
    return BundleCall(
        bundle_id="bundle-1",
        provider="",
        model=model,
        system=(SharedBlock(system, cacheable=True, ttl=ttl),),
        shared=(SharedBlock(shared, cacheable=True, ttl=ttl),) if shared else (),
        items=items(n, prefix),
        temperature=temperature,
        max_tokens=max_tokens,
    )


def ids(call: BundleCall) -> set[str]:
    return {item.custom_id for item in call.items}
