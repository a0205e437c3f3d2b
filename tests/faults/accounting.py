"""The accounting every fault test ends with: nothing lost, nothing acted on twice.

For one CJ batch: every comparison row is final (succeeded or failed with an error code);
the provider queued exactly one request per row; the callback topic carried a callback for
every row and for nothing else; the CJ service acted on one callback per row and counted
every other copy (at-least-once redelivery) as ignored.
"""

from __future__ import annotations

from collections import defaultdict

from cjllm.cj.records import BatchProgress
from cjllm.cj.tables import Comparison, ComparisonStatus
from cjllm.contracts import EventEnvelope, LLMComparisonResultV1


class CallbackLog:
    """Every callback seen on the topic by an observer group, by CJ batch."""

    def __init__(self) -> None:
        self.by_batch: dict[str, dict[str, list[LLMComparisonResultV1]]] = defaultdict(
            lambda: defaultdict(list)
        )

    async def __call__(self, envelope: EventEnvelope) -> None:
        result = envelope.result()
        batch = str(result.request_metadata.get("cj_batch_id"))
        self.by_batch[batch][str(result.correlation_id)].append(result)

    def distinct(self, batch_id: str) -> int:
        return len(self.by_batch[batch_id])

    def copies(self, batch_id: str) -> int:
        return sum(len(rs) for rs in self.by_batch[batch_id].values())


def check_accounting(
    rows: list[Comparison],
    progress: BatchProgress,
    callbacks: dict[str, list[LLMComparisonResultV1]],
    requests_queued: int,
) -> None:
    """``requests = callbacks = CJ rows``, and each comparison acted on exactly once."""
    assert rows, "the batch made no comparison"
    for row in rows:
        assert row.status in (ComparisonStatus.SUCCEEDED, ComparisonStatus.FAILED), row
        if row.status == ComparisonStatus.FAILED:
            assert row.error_code and row.error_message, row
    row_ids = {str(r.request_correlation_id) for r in rows}
    assert len(row_ids) == len(rows)
    assert requests_queued == len(rows), (requests_queued, len(rows))
    assert set(callbacks) == row_ids
    assert progress.pending == 0
    assert progress.succeeded + progress.failed == len(rows)
    copies = sum(len(rs) for rs in callbacks.values())
    assert progress.ignored_callbacks == copies - len(rows), (progress.ignored_callbacks, copies)
    for row in rows:  # the row holds what a callback for it said
        said = callbacks[str(row.request_correlation_id)]
        if row.status == ComparisonStatus.SUCCEEDED:
            assert any(r.winner == row.winner and r.is_success for r in said), (row, said)
        else:
            codes = {r.error_detail.error_code for r in said if r.error_detail is not None}
            assert row.error_code in codes, (row, said)
