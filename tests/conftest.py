"""Session-wide real services: Redis, PostgreSQL and a Kafka-protocol broker.

Each starts once per test run on a free loopback port, on first use. If one cannot start,
the tests that need it error with the reason (never a silent skip).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import services


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with services.redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with services.postgres_server() as url:
        yield url


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    with services.kafka_broker() as servers:
        yield servers
