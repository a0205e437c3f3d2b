"""Dropped connections under concurrent POSTs: uvicorn's keep-alive against httpx's pool
(run: python bench/keep_alive.py [--rounds 12] [--concurrency 32]).

The provider API (SQLite queue, nothing consuming it) is served by ``api_guard.serve`` on a
real socket, once with uvicorn's default keep-alive (5 s) and once with the project's
(``api_guard.KEEP_ALIVE_SECONDS``). One httpx client with default pool settings posts
``--concurrency`` comparisons at once, ``--rounds`` times, idle between rounds for just under
httpx's pool expiry (5 s) — as the CJ service does between rounds. With the two timeouts
equal, the server closes connections the client is about to reuse and some POSTs fail with
``httpx.ReadError``; the bench prints the transport errors of each setting side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import tempfile
import uuid
from pathlib import Path
from typing import Any

import httpx
from bundling_sim import free_port

from cjllm import api_guard
from cjllm.provider.service import embedded_provider
from cjllm.settings import ProviderSettings

PATH = "/api/v1/comparison"
UVICORN_DEFAULT_KEEP_ALIVE = 5.0


def request(i: int) -> dict[str, Any]:
    return {
        "prompt_blocks": [
            {"target": "system", "content": "You are an experienced examiner.", "cacheable": True},
            {"target": "user_content", "content": "Which essay argues better?", "cacheable": True},
            {"target": "user_content", "content": f"Essay {2 * i}: school should start later."},
            {"target": "user_content", "content": f"Essay {2 * i + 1}: school should not."},
        ],
        "callback_topic": "keep-alive-bench",
        "correlation_id": str(uuid.uuid4()),
        "llm_config_overrides": {"provider_override": "mock"},
        "metadata": {"essay_a_id": f"e{2 * i}", "essay_b_id": f"e{2 * i + 1}",
                     "cj_batch_id": "keep-alive"},
    }  # fmt: skip


async def errors_with(keep_alive: float, rounds: int, concurrency: int, work: Path) -> int:
    """Transport errors seen by an httpx client against a server holding idle connections
    ``keep_alive`` seconds."""
    api_guard.KEEP_ALIVE_SECONDS = keep_alive  # what ``serve`` reads
    settings = ProviderSettings(
        queue_url=f"sqlite:///{work / f'queue-{keep_alive}.sqlite'}", bus_url="memory://"
    )
    errors = 0
    async with embedded_provider(settings, work=False) as svc:
        port = free_port()
        server = api_guard.serve(svc.app, "127.0.0.1", port)
        serving = asyncio.create_task(server.serve())
        while not server.started:  # noqa: ASYNC110 - uvicorn offers no started event
            await asyncio.sleep(0.01)
        expiry = httpx.Limits().keepalive_expiry or 5.0
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:

            async def post(i: int) -> None:
                nonlocal errors
                try:
                    response = await client.post(PATH, json=request(i))
                except httpx.TransportError:
                    errors += 1
                else:
                    assert response.status_code == 202, response.text

            for r in range(rounds):
                await asyncio.gather(*(post(r * concurrency + i) for i in range(concurrency)))
                await asyncio.sleep(expiry - 0.05 + random.random() * 0.05)
        server.should_exit = True
        await serving
    return errors


async def main(rounds: int, concurrency: int) -> None:
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    posts = rounds * concurrency
    with tempfile.TemporaryDirectory() as tmp:
        project = api_guard.KEEP_ALIVE_SECONDS
        default = await errors_with(UVICORN_DEFAULT_KEEP_ALIVE, rounds, concurrency, Path(tmp))
        ours = await errors_with(project, rounds, concurrency, Path(tmp))
    print(f"transport errors in {posts} POSTs ({concurrency} at once, {rounds} bursts):")
    print(f"uvicorn's default keep-alive {UVICORN_DEFAULT_KEEP_ALIVE:.0f} s: {default} errors")
    print(f"cjllm's keep-alive {project:.0f} s: {ours} errors")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.concurrency))
