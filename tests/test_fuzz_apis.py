"""Both HTTP APIs fuzzed from their own OpenAPI documents (schemathesis): no 5xx, no hang.

The provider and the CJ service run wired together (the embedded shape: SQLite queue and
database, the mock judge) behind real uvicorn servers in a thread of their own, so valid
assessments really start and run. Each operation gets schema-valid and schema-violating
requests, derandomized (the same requests every run) and bounded in number; every answer
must come within the guard timeout and be below 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from cjllm.api_guard import serve
from cjllm.cj.api import create_app
from cjllm.embedded import embedded_services
from cjllm.settings import CJSettings, ProviderSettings
from tests.provider.support import eventually
from tests.services import free_port

PROVIDER_TOKEN = "fuzz-provider-token"
CJ_TOKEN = "fuzz-cj-token"
EXAMPLES_PER_OPERATION = 30
GUARD_SECONDS = 20.0


@dataclass
class Served:
    provider_url: str
    cj_url: str


@contextlib.contextmanager
def both_apis(out_dir: Path) -> Iterator[Served]:
    """The two services' APIs on free loopback ports, served from another thread's loop."""
    ports = free_port(), free_port()
    ready, finished = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    async def run() -> None:
        psettings = ProviderSettings(
            api_token=PROVIDER_TOKEN, max_request_bytes=200_000, request_read_timeout_seconds=5
        )
        csettings = CJSettings(
            cj_api_token=CJ_TOKEN,
            cj_max_request_bytes=200_000,
            comparisons_per_essay=1.0,
            max_comparisons_total=6,
            split_half_splits=2,
        )
        async with embedded_services(out_dir, psettings, csettings) as services:
            servers = [
                serve(services.provider.app, "127.0.0.1", ports[0]),
                serve(create_app(services.cj), "127.0.0.1", ports[1]),
            ]
            tasks = [asyncio.create_task(s.serve()) for s in servers]
            await eventually(lambda: all(s.started for s in servers))
            ready.set()
            await asyncio.to_thread(finished.wait)
            for s in servers:
                s.should_exit = True
            await asyncio.gather(*tasks)

    def main() -> None:
        try:
            asyncio.run(run())
        except BaseException as exc:
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=main, name="cjllm-fuzz-apis", daemon=True)
    thread.start()
    ready.wait(60)
    if failure:
        raise failure[0]
    try:
        yield Served(f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}")
    finally:
        finished.set()
        thread.join(60)


@pytest.fixture(scope="module")
def apis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with both_apis(tmp_path_factory.mktemp("fuzz")) as served:
        yield served


def fuzz(base_url: str, token: str) -> list[int]:
    """Send every operation's generated requests; return the status codes seen."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    seen: list[int] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        cases = st.one_of(
            *(operation.as_strategy(generation_mode=mode) for mode in schemathesis.GenerationMode)
        )

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=cases)
        def send(case: schemathesis.Case) -> None:
            headers = {"Authorization": f"Bearer {token}"}
            response = case.call(base_url=base_url, headers=headers, timeout=GUARD_SECONDS)
            seen.append(response.status_code)
            assert response.status_code < 500, (
                f"{case.method} {case.formatted_path}: {response.status_code} "
                f"{response.text[:500]}\n{case.as_curl_command()}"
            )

        send()
    return seen


def test_the_provider_api_answers_fuzzed_requests_without_a_server_error(apis: Served) -> None:
    seen = fuzz(apis.provider_url, PROVIDER_TOKEN)
    # schema-valid bodies got past validation (400: a provider this service does not have)
    assert 422 in seen and 400 in seen


def test_the_cj_api_answers_fuzzed_requests_without_a_server_error(apis: Served) -> None:
    seen = fuzz(apis.cj_url, CJ_TOKEN)
    assert 422 in seen and any(s in seen for s in (202, 400))
