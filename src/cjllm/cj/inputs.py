"""What a caller hands the CJ service: essays, anchors with known grades, a grade scale."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cjllm.cj.options import InvalidBatch
from cjllm.cj.ranking import numeric_grade_scale
from cjllm.cj.records import NewEssay

MAX_ID_CHARS = 255


@dataclass(frozen=True)
class EssayInput:
    """An essay to rank. ``grade`` is set for anchors (essays whose grade is known)."""

    essay_id: str
    text: str
    grade: str | None = None


def checked_essays(
    essays: Sequence[EssayInput],
    anchors: Sequence[EssayInput],
    grade_scale: Sequence[str] | None,
) -> tuple[list[NewEssay], list[str] | None]:
    """Validate essays and anchors; return the rows to store and the grade scale.

    Ids are unique across essays and anchors; every text is non-blank; every anchor has a
    grade; at least two essays in all. The grade scale (lowest first) is required with
    anchors unless every anchor grade is a number, in which case it is the numeric order.
    """
    out: list[NewEssay] = []
    seen: set[str] = set()
    for kind, group in (("essay", essays), ("anchor", anchors)):
        for e in group:
            if not e.essay_id or len(e.essay_id) > MAX_ID_CHARS:
                raise InvalidBatch(f"{kind} id {e.essay_id!r} must be 1..{MAX_ID_CHARS} chars")
            if e.essay_id in seen:
                raise InvalidBatch(f"essay id {e.essay_id!r} occurs more than once")
            if not e.text.strip():
                raise InvalidBatch(f"{kind} {e.essay_id!r} has no text")
            grade = e.grade if kind == "anchor" else None
            if kind == "anchor" and not grade:
                raise InvalidBatch(f"anchor {e.essay_id!r} has no grade")
            seen.add(e.essay_id)
            out.append(NewEssay(e.essay_id, e.text, grade))
    if len(out) < 2:
        raise InvalidBatch(f"comparative judgement needs at least 2 essays, got {len(out)}")
    if not anchors:
        return out, list(grade_scale) if grade_scale else None
    grades = [str(a.grade) for a in anchors]
    if grade_scale is None:
        scale = numeric_grade_scale(grades)
        if scale is None:
            raise InvalidBatch(
                f"anchor grades {sorted(set(grades))} are not all numbers: give grade_scale "
                "(the grades in order, lowest first)"
            )
        return out, scale
    unknown = sorted(set(grades) - set(grade_scale))
    if unknown:
        raise InvalidBatch(f"anchor grades {unknown} are not in grade_scale {list(grade_scale)}")
    return out, list(grade_scale)
