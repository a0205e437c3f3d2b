"""A batch row with plain essays, for tests of the CJ database (store, settled rounds)."""

from __future__ import annotations

import uuid

from cjllm.cj.records import NewEssay
from cjllm.cj.store import Store
from cjllm.cj.tables import Batch


async def new_batch(store: Store, essays: int = 4) -> str:
    """A new serial-round batch of ``essays`` essays (ids e0, e1, …); its id."""
    batch_id = str(uuid.uuid4())
    await store.create_batch(
        Batch(
            id=batch_id,
            batching_strategy="serial_round",
            provider="mock",
            instructions="x",
            options={"budget": 10},
            ignored_callbacks=0,
            completion_published=False,
        ),
        [NewEssay(f"e{i}", f"text {i}") for i in range(essays)],
    )
    return batch_id
