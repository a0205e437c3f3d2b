"""Session-wide real services: Redis, PostgreSQL, a Kafka-protocol broker and a local
OpenAI-compatible model server (llama-cpp-python with a tiny open model).

Each starts once per test run on a free loopback port, on first use. If one cannot start,
the tests that need it error with the reason (never a silent skip).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator

import pytest

from tests import services


@pytest.fixture(autouse=True)
def ids_seeded_by_the_test(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ``uuid.uuid4()`` made in a test's own process comes from a generator seeded by
    the test's id, so a test meets the same ids every run: the batch ids, and through them
    the correlation ids that seed the stub and mock judges' decisions and the planner's
    random share. A test that asserts on what such a judge decided (a ranking's order, ρ,
    grades) is then the same test every run instead of a new draw each time — one such test
    failed a CI run on an unlucky random batch id. Ids stay distinct within a test (a
    128-bit stream) and between tests (different seeds)."""
    draws = random.Random(request.node.nodeid)
    monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID(int=draws.getrandbits(128), version=4))


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


# The fast subset (`pytest -m smoke`, about a minute): what a clean clone must pass on its
# own (tests/e2e/test_clean_clone.py runs it in a clone with nothing beside it). It covers
# the parts that once depended on files outside the tree or on the checkout path: the
# vendors' request types, the inputs, the report, the command line, and one end-to-end
# ranking of the examples.
SMOKE = (
    "tests/test_contracts.py",
    "tests/test_essays.py",
    "tests/test_rank.py",
    "tests/test_report.py",
    "tests/test_startup.py",
    "tests/adapters/test_request_schemas.py",
    "tests/e2e/test_rank_embedded.py::test_rank_examples_recovers_the_manifest_order",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid.startswith(SMOKE):
            item.add_marker(pytest.mark.smoke)


@pytest.fixture(scope="session")
def local_model_url() -> Iterator[str]:
    with services.llama_cpp_server() as url:
        yield url
