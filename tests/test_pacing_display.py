"""What `cjllm rank` shows of the provider's rate limits: while waiting, and at the end."""

from __future__ import annotations

from datetime import datetime

from cjllm.provider.limiter import Pacing
from cjllm.terminal import provider_notes, waiting_note


def pacing(**changes: object) -> Pacing:
    values: dict[str, object] = {
        "waiting": False,
        "resume_in": 0.0,
        "held_back_seconds": 0.0,
        "requests": {"ok": 10},
        "finish_in": None,
    }
    values.update(changes)
    return Pacing(**values)  # type: ignore[arg-type]


def test_the_progress_line_says_it_waits_for_the_rate_limit_and_when_it_will_finish() -> None:
    now = datetime(2026, 3, 1, 14, 0)
    assert waiting_note(pacing(), now) == ""
    assert waiting_note(None, now) == ""
    waiting = pacing(waiting=True, resume_in=12.0, finish_in=1800.0)
    assert waiting_note(waiting, now) == "waiting for the provider's rate limit, done about 14:30"
    unknown = pacing(waiting=True, resume_in=12.0)
    assert waiting_note(unknown, now) == "waiting for the provider's rate limit"


def test_the_summary_counts_refusals_and_waiting_and_names_an_empty_account() -> None:
    assert provider_notes(pacing()) == []
    busy = pacing(requests={"ok": 20, "rate_limited": 5, "overloaded": 1}, held_back_seconds=42.4)
    assert provider_notes(busy) == [
        "Rate limits: 26 requests sent, 6 refused (rate limited or overloaded); waited 42s for them"
    ]
    broke = pacing(requests={"insufficient_quota": 1}, out_of_quota="openai: no quota left")
    (line,) = provider_notes(broke)
    assert "insufficient_quota" in line and "openai: no quota left" in line
