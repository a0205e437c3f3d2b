"""Which batch a ``cjllm rank`` run is: its identity, recorded in ``--out``.

Resuming: ``--out`` keeps ``run.json`` (the batch id and a fingerprint of everything that
defines the run: essays and their texts, anchors, instructions, rubric, the judge — provider,
model, server, and for the simulated judge its mode (manifest or text heuristic) and
parameters — and the options) next to the queue and database. Re-running the same run
continues that batch — comparisons already judged are not asked again; a finished batch
just rewrites the report. Anything else in the same ``--out`` is refused with the
differences named: use another ``--out`` (or delete the folder) to start over.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cjllm.essays import essay_set_digest
from cjllm.judges import Judging
from cjllm.out_dir import differences, read_run_file, write_run_file
from cjllm.preflight import RankError, RankInputs, RankRequest


def fingerprint(request: RankRequest, inputs: RankInputs, judging: Judging) -> dict[str, Any]:
    """Everything that defines a run; a resumed run must match it exactly."""

    def sha(text: str | None) -> str | None:
        return None if text is None else hashlib.sha256(text.encode("utf-8")).hexdigest()

    return {
        "essays": essay_set_digest(inputs.essays),
        "essay_count": len(inputs.essays),
        "anchors": essay_set_digest(inputs.anchors) if inputs.anchors else None,
        "anchor_grades": sorted((a.essay_id, a.grade or "") for a in inputs.anchors) or None,
        "grade_scale": list(request.grade_scale) if request.grade_scale else None,
        "instructions": sha(inputs.instructions),
        "rubric": sha(inputs.rubric),
        "judge": judging.identity(),
        "strategy": request.strategy.value,
        "bundle_size": request.bundle_size,
        "comparisons_per_essay": request.comparisons_per_essay,
        "budget": request.budget,
        "seed": request.seed,
        **({"pairing": request.pairing} if request.pairing is not None else {}),
    }


RUN_NAMESPACE = uuid.UUID("6f1b3c1e-6a53-5b9c-9d0e-7c3d2f1a8b41")  # cjllm rank batch ids


def run_batch_id(fingerprint: dict[str, Any]) -> str:
    """The batch id of a run: a UUID5 of everything that defines it, ``--seed`` included.

    With it the pairing seed and every comparison's correlation id (which seeds the simulated
    judge's draw) follow from the command line, so the same command gives the same ranking.
    """
    return str(uuid.uuid5(RUN_NAMESPACE, json.dumps(fingerprint, sort_keys=True)))


def batch_for(request: RankRequest, inputs: RankInputs, judging: Judging, out_dir: Path) -> str:
    """The batch id recorded in ``out_dir`` for these inputs, or a new one (recorded now)."""
    wanted = fingerprint(request, inputs, judging)
    previous = read_run_file(out_dir)
    if previous is not None:
        changed = differences(previous["inputs"], wanted)
        if changed:
            then = (
                f" (that run's judge: {previous.get('judge', '?')})" if "judge" in changed else ""
            )
            raise RankError(
                f"{out_dir} holds another run, started {previous.get('started_at', '?')}, "
                f"with different {', '.join(changed)}{then}; cjllm resumes only the same "
                f"run. Use another --out, or delete {out_dir} to start over."
            )
        return str(previous["batch_id"])
    batch_id = run_batch_id(wanted)
    write_run_file(
        out_dir,
        {
            "batch_id": batch_id,
            "started_at": datetime.now(UTC).isoformat(),
            "source": str(request.path),
            "judge": judging.describe(),
            "inputs": wanted,
        },
    )
    return batch_id
