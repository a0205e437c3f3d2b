"""Run as a separate process by ``test_queue``: claim bundles from a shared queue until empty.

``python -m tests.provider.claim_race URL OWNER`` claims one bundle, says ``claimed`` on
stdout, waits for a line on stdin (the test sends it once every process has a bundle, so
each takes part whatever the machine's load), then races the others for the rest and
prints every queue id it claimed as JSON.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid

from cjllm.provider.queue import queue_from_url


async def main(url: str, owner: str) -> list[str]:
    queue = queue_from_url(url, max_items=100_000, max_bytes=10**9)

    async def claim() -> list[str]:
        now = time.time()
        items = await queue.claim(owner, uuid.uuid4().hex, now, now + 600, linger=0.0)
        return [it.queue_id for it in items]

    claimed = await claim()
    if not claimed:
        raise SystemExit(f"{owner}: the queue was empty at the first claim")
    print("claimed", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    empty = 0
    while empty < 20:
        batch = await claim()
        empty = 0 if batch else empty + 1
        claimed += batch
        await asyncio.sleep(0.001)
    await queue.close()
    return claimed


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2]))))
