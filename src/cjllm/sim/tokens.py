"""Token counting and prompt caching, simulated.

Tokens: ``ceil(characters / 4)`` of a text, at least 1 — a deterministic approximation of
the vendors' tokenizers (English prose averages about four characters per token). A prefix
is counted the same way, so the parts of a prompt add up to its total.

Caching, Anthropic style (:meth:`PromptCache.anthropic`): every ``cache_control``
breakpoint names a prefix; the longest prefix written within its TTL is read from cache,
the breakpoint prefixes beyond it are written (five-minute or one-hour TTL), and the rest
is ordinary input. A prefix shorter than ``min_tokens`` is never cached.

Caching, OpenAI style (:meth:`PromptCache.openai`): automatic, no breakpoints. A prompt is
cut into 128-token steps from 1024 tokens on; the longest step whose prefix was seen within
the TTL counts as cached tokens.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

CHARS_PER_TOKEN = 4
OPENAI_STEP_TOKENS = 128
TTL_SECONDS = {"5m": 300.0, "1h": 3600.0}


def count_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))


def prefix_tokens(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TOKEN)


@dataclass(frozen=True)
class CacheUse:
    read: int = 0
    written_5m: int = 0
    written_1h: int = 0

    @property
    def written(self) -> int:
        return self.written_5m + self.written_1h


@dataclass
class PromptCache:
    """Prefix hashes seen, with their expiry (monotonic seconds)."""

    min_tokens: int = 1024
    openai_ttl_seconds: float = 600.0
    clock: Callable[[], float] = time.monotonic
    entries: dict[str, float] = field(default_factory=dict)

    def clear(self) -> None:
        self.entries.clear()

    def _live(self, key: str, now: float) -> bool:
        expiry = self.entries.get(key)
        return expiry is not None and expiry > now

    def anthropic(
        self, model: str, blocks: Sequence[tuple[str, str | None]], *, remember: bool = True
    ) -> CacheUse:
        """``blocks``: the request's text blocks in prompt order, each with its breakpoint TTL
        (None where the block has no ``cache_control``). ``remember=False`` only looks."""
        now = self.clock()
        digest = hashlib.sha256(model.encode())
        chars = 0
        points: list[tuple[str, int, str]] = []  # (prefix hash, prefix tokens, ttl)
        for text, ttl in blocks:
            digest.update(text.encode())
            digest.update(b"\x00")
            chars += len(text)
            if ttl is not None and prefix_tokens(chars) >= self.min_tokens:
                points.append((digest.hexdigest(), prefix_tokens(chars), ttl))
        read = 0
        for key, tokens, _ttl in points:
            if self._live(key, now):
                read = max(read, tokens)
        written = {"5m": 0, "1h": 0}
        covered = read
        for key, tokens, ttl in points:
            if tokens > covered:
                written[ttl] += tokens - covered
                covered = tokens
            if remember:
                self.entries[key] = max(self.entries.get(key, 0.0), now + TTL_SECONDS[ttl])
        return CacheUse(read=read, written_5m=written["5m"], written_1h=written["1h"])

    def openai(self, model: str, prompt: str) -> int:
        """Cached tokens for a whole prompt (then remembered for the TTL)."""
        now = self.clock()
        step_chars = OPENAI_STEP_TOKENS * CHARS_PER_TOKEN
        start_chars = max(self.min_tokens, OPENAI_STEP_TOKENS) * CHARS_PER_TOKEN
        digest = hashlib.sha256(model.encode())
        done, cached = 0, 0
        for end in range(start_chars, len(prompt) + 1, step_chars):
            digest.update(prompt[done:end].encode())
            done = end
            key = "oa:" + digest.hexdigest()
            if self._live(key, now):
                cached = prefix_tokens(end)
            self.entries[key] = now + self.openai_ttl_seconds
        return cached
