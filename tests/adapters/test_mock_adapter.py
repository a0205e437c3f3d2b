"""The mock adapter keeps a bounded record of its calls (a long run sent it every prompt)."""

from __future__ import annotations

from cjllm.provider.adapters.mock import KEEP_CALLS, MockAdapter
from tests.adapters.bundles import bundle


async def test_the_mock_keeps_its_most_recent_calls_not_all() -> None:
    mock = MockAdapter()
    sent = []
    for n in range(3 * KEEP_CALLS + 7):
        call = bundle(2, prefix=f"call{n}")
        sent.append(call)
        outcome = await mock.call_bundle(call)
        assert set(outcome.reconciled.answers) == {i.custom_id for i in call.items}
    assert KEEP_CALLS <= len(mock.calls) <= 2 * KEEP_CALLS
    assert mock.calls == sent[-len(mock.calls) :]  # the latest, in order
    assert len(mock.call_times) == len(mock.outcomes) == len(mock.calls)
