"""Run as a separate process by ``test_queue``: claim bundles from a shared queue until empty.

``python -m tests.provider.claim_race URL OWNER START_AT`` prints the claimed queue ids as JSON.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid

from cjllm.provider.queue import queue_from_url


async def main(url: str, owner: str, start_at: float) -> list[str]:
    queue = queue_from_url(url, max_items=100_000, max_bytes=10**9)
    await asyncio.sleep(max(0.0, start_at - time.time()))
    claimed: list[str] = []
    empty = 0
    while empty < 20:
        now = time.time()
        items = await queue.claim(owner, uuid.uuid4().hex, now, now + 600, linger=0.0)
        if items:
            empty = 0
            claimed += [it.queue_id for it in items]
        else:
            empty += 1
        await asyncio.sleep(0.001)
    await queue.close()
    return claimed


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))))
