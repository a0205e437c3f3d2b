"""A deterministic simulated judge, shared by the mock adapter and the simulated server.

Quality of an essay: the hidden quality from a manifest when the essay text is known to
one (matched by the sha256 of its stripped text, or of the text after a one-line heading
such as ``Essay A (id 7):``), otherwise a text heuristic (length, vocabulary variety,
sentence structure) — or, with ``unknown="coin"`` (the simulated server's default), a
seeded coin whenever either essay is unknown. The decision is a Bradley-Terry draw:
P(A wins) = sigmoid((q_A - q_B + position_bias) / noise), seeded by (seed, custom_id) so
the same item always gets the same answer, retries included.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

_WORD = re.compile(r"[A-Za-z']+")
_SENTENCE = re.compile(r"[.!?]+")


def text_key(text: str) -> str:
    return hashlib.sha256(text.strip().encode("utf-8")).hexdigest()


def heuristic_quality(text: str) -> float:
    """A crude, deterministic quality signal from surface features (not an assessment).

    The mock judge calls it twice per comparison, so ASCII text (the common case) takes a
    fast path on bytes that gives exactly the same number as the general one."""
    if text.isascii():
        return _ascii_quality(text)
    words = [w.lower() for w in _WORD.findall(text)]
    if not words:
        return -5.0
    head = words[:400]
    sentences = len([s for s in _SENTENCE.split(text) if s.strip()])
    long_words = sum(len(w) >= 7 for w in words)
    return _quality(len(words), len(set(head)) / len(head), sentences, long_words, text)


_WORD_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz'")  # as _WORD
_NOT_WORD = bytes(c if c in _WORD_BYTES else ord(" ") for c in range(256))
_ENDS_SENTENCE = bytes(ord(".") if chr(c) in ".!?" else c for c in range(256))
_ASCII_SPACE = bytes(c for c in range(128) if chr(c).isspace())  # what str.strip() strips


def _ascii_quality(text: str) -> float:
    raw = text.encode("ascii").lower()  # ASCII: lower() keeps every length
    words = raw.translate(_NOT_WORD).split()
    if not words:
        return -5.0
    head = words[:400]
    parts = raw.translate(_ENDS_SENTENCE).split(b".")
    sentences = len([s for s in parts if s.strip(_ASCII_SPACE)])
    lengths = sorted(map(len, words))
    long_words = len(lengths) - bisect.bisect_left(lengths, 7)
    return _quality(len(words), len(set(head)) / len(head), sentences, long_words, text)


def _quality(words: int, variety: float, sentences: int, long_words: int, text: str) -> float:
    mean_len = words / max(1, sentences)
    paragraphs = min(6, len([p for p in text.split("\n\n") if p.strip()]))
    sentence_shape = -abs(math.log(mean_len / 18.0))
    return (
        0.9 * math.log1p(words)
        + 3.0 * variety
        + 4.0 * long_words / words
        + 1.0 * sentence_shape
        + 0.15 * paragraphs
    )


def load_manifest_qualities(paths: Iterable[Path]) -> dict[str, float]:
    """Read ``manifest.json`` files: ``{"essays": [{"essay_id", "file", "quality"}]}``.

    Returns text-hash -> quality for every essay file the manifest names.
    """
    out: dict[str, float] = {}
    for path in paths:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        for entry in manifest["essays"]:
            text = (path.parent / entry["file"]).read_text(encoding="utf-8")
            out[text_key(text)] = float(entry["quality"])
    return out


@dataclass(frozen=True)
class Decision:
    winner: str
    justification: str
    confidence: float


@dataclass
class Judge:
    qualities: Mapping[str, float] = field(default_factory=dict)
    noise: float = 1.0
    position_bias: float = 0.0
    seed: int = 0
    unknown: Literal["heuristic", "coin"] = "heuristic"

    def known_quality(self, text: str) -> float | None:
        """The manifest quality of ``text`` (also found under a one-line heading), or None."""
        known = self.qualities.get(text_key(text))
        if known is None:
            heading, newline, body = text.strip().partition("\n")
            if newline and len(heading) <= 120:
                known = self.qualities.get(text_key(body))
        return known

    def quality(self, text: str) -> float:
        known = self.known_quality(text)
        return known if known is not None else heuristic_quality(text)

    def decide(self, custom_id: str, parts: tuple[str, ...]) -> Decision:
        rng = random.Random(f"{self.seed}:{custom_id}")
        if len(parts) != 2:
            winner = "Essay A" if rng.random() < 0.5 else "Essay B"
            return Decision(winner, "No separable essays; a seeded coin decided.", 1.0)
        if self.unknown == "coin" and any(self.known_quality(p) is None for p in parts):
            winner = "Essay A" if rng.random() < 0.5 else "Essay B"
            return Decision(winner, "An essay without a known quality; a seeded coin decided.", 1.0)
        margin = self.quality(parts[0]) - self.quality(parts[1]) + self.position_bias
        p_a = 1.0 / (1.0 + math.exp(-margin / max(self.noise, 1e-9)))
        winner = "Essay A" if rng.random() < p_a else "Essay B"
        p_win = p_a if winner == "Essay A" else 1.0 - p_a
        confidence = round(1.0 + 4.0 * max(0.0, 2.0 * p_win - 1.0), 1)
        justification = (
            f"{winner} is the stronger essay: its argument is better developed and more "
            f"clearly expressed (simulated judge, p={p_win:.2f})."
        )
        return Decision(winner, justification, min(5.0, max(1.0, confidence)))
