"""What a batch reports as it goes: the events a progress hook receives, and the hook's type.

:class:`~cjllm.cj.workflow.CJWorkflow` emits them to the hook given to
:func:`cjllm.cj.service.cj_service` (or :func:`cjllm.embedded.embedded_services`); the
command line's terminal view (:mod:`cjllm.terminal`) shows them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

__all__ = ["ProgressEvent", "ProgressHook"]


@dataclass(frozen=True)
class ProgressEvent:
    """Pushed to the progress hook as things happen; :meth:`CJWorkflow.progress` has totals.

    ``kind``: ``round_started`` (``planned`` comparisons), ``comparison_finished`` (one
    callback applied: ``succeeded``, ``bundle_id``, ``tokens``, ``cost``), ``round_closed``,
    ``batch_finished`` (``status``).
    """

    batch_id: str
    kind: Literal["round_started", "comparison_finished", "round_closed", "batch_finished"]
    round_number: int | None = None
    planned: int | None = None
    succeeded: bool | None = None
    bundle_id: str | None = None
    tokens: int = 0
    cost: float = 0.0
    status: str | None = None


ProgressHook = Callable[[ProgressEvent], None]
