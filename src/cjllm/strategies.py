"""The batching strategies (CJ setting ``LLM_BATCHING_STRATEGY``), in a module of their own
so the command line can offer them without importing pydantic (``cjllm --help`` stays fast).
:mod:`cjllm.contracts` re-exports the enum; see there for the contracts that use it."""

from __future__ import annotations

from enum import StrEnum


class BatchingStrategy(StrEnum):
    """How the CJ service asks the provider to bundle (CJ setting ``LLM_BATCHING_STRATEGY``)."""

    SERIAL_ROUND = "serial_round"
    SERIAL_OVERRIDE = "serial_override"
    PER_REQUEST = "per_request"
    ASYNC_BATCH = "async_batch"
    NIGHTLY_BATCH = "nightly_batch"


BATCH_JOB_STRATEGIES = (BatchingStrategy.ASYNC_BATCH, BatchingStrategy.NIGHTLY_BATCH)
"""The strategies whose comparisons go to the vendors' batch APIs (provider batch jobs)."""
