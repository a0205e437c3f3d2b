"""Run the simulated provider on a free loopback port inside the test process.

uvicorn serves the app from a thread with its own event loop, so the SDK clients in the
tests' loop talk to it over real HTTP (the SDKs use ``httpx2``; nothing is patched).
:class:`SimControl` drives the control endpoints.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import uvicorn

from cjllm.sim.server import create_app
from cjllm.sim.state import SimConfig
from tests.services import free_port


class SimControl:
    """The running sim: its URLs and its ``/sim/*`` endpoints."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=10.0)

    @property
    def anthropic_base_url(self) -> str:
        return self.url

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    def counters(self) -> dict[str, Any]:
        return dict(self.http.get("/sim/counters").raise_for_status().json())

    def calls(self, limit: int = 20) -> list[dict[str, Any]]:
        return list(self.http.get("/sim/calls", params={"limit": limit}).json()["calls"])

    def last_call(self) -> dict[str, Any]:
        calls = self.calls(1)
        assert calls, "the sim answered no call"
        return calls[-1]

    def configure(self, **patch: Any) -> dict[str, Any]:
        response = self.http.patch("/sim/config", json=patch)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def restore(self, **patch: Any) -> None:
        """Default configuration (plus ``patch``), zeroed counters, empty caches."""
        self.configure(**{**SimConfig().model_dump(), **patch})
        self.http.post("/sim/reset").raise_for_status()


@contextlib.contextmanager
def running_sim(config: SimConfig | None = None) -> Iterator[SimControl]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
        )
    )
    thread = threading.Thread(target=server.run, name="cjllm-sim", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the simulated provider did not start")
        time.sleep(0.02)
    control = SimControl(f"http://127.0.0.1:{port}")
    try:
        yield control
    finally:
        control.http.close()
        server.should_exit = True
        thread.join(10)
