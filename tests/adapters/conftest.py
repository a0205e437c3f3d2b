"""Both SDK adapters against the simulated provider, through their real SDK clients."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from cjllm.provider.adapters import make_adapter
from cjllm.provider.calls import LLMAdapter
from cjllm.settings import ProviderSettings
from tests.sim.conftest import sim, sim_server, vendor_env
from tests.sim.running import SimControl

__all__ = ["sim", "sim_server", "vendor_env"]

VENDORS = ("anthropic", "openai")


@pytest.fixture(params=VENDORS)
def vendor(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def adapter(vendor: str, vendor_env: SimControl) -> AsyncIterator[LLMAdapter]:
    """The vendor's adapter as the service builds it (``make_adapter`` + default settings)."""
    built = make_adapter(vendor, ProviderSettings())
    yield built
    await built.aclose()
