from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.sim.running import SimControl, running_sim


@pytest.fixture(scope="session")
def sim_server() -> Iterator[SimControl]:
    with running_sim() as control:
        yield control


@pytest.fixture
def sim(sim_server: SimControl) -> SimControl:
    """The session's sim, back to its defaults for this test."""
    sim_server.restore()
    return sim_server


@pytest.fixture
def vendor_env(sim: SimControl, monkeypatch: pytest.MonkeyPatch) -> SimControl:
    """Both SDKs' standard environment pointed at the sim."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", sim.anthropic_base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_BASE_URL", sim.openai_base_url)
    return sim
