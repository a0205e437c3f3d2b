"""Fixtures for the provider service: a fresh queue on each backend, settings, callbacks."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cjllm.provider.queue import Queue, queue_from_url


def queue_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A queue URL of its own: a new SQLite file, or a new key prefix on the session Redis."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'queue.sqlite'}"
    redis_url = request.getfixturevalue("redis_url")
    return f"{redis_url}?prefix=t-{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["sqlite", "redis"])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return queue_url(request.param, tmp_path, request)


@pytest.fixture
def redis_queue_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return queue_url("redis", tmp_path, request)


@pytest.fixture
async def queue(backend_url: str) -> AsyncIterator[Queue]:
    q = queue_from_url(backend_url, max_items=1000, max_bytes=10_000_000)
    yield q
    await q.close()
