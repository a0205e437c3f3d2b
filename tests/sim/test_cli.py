"""``cjllm sim --port P``: the command serves the sim with the options it was given."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from tests.services import free_port, wait_for_port

CLI = [sys.executable, "-c", "from cjllm.cli import app; app()", "sim"]
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "essays" / "manifest.json"


def test_cjllm_sim_serves_with_its_options() -> None:
    port = free_port()
    options = [
        "--port", str(port), "--manifest", str(EXAMPLES), "--noise", "0.5",
        "--position-bias", "0.25", "--fault", "overloaded=0.1", "--fault", "missing_item=0.2",
        "--rpm", "100", "--latency-item", "0.01", "--api-key", "secret", "--batch-seconds", "2",
    ]  # fmt: skip
    proc = subprocess.Popen([*CLI, *options], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, proc, "cjllm sim")
        base = f"http://127.0.0.1:{port}"
        config = httpx.get(f"{base}/sim/config").json()
        assert config["judge"]["manifests"] == [str(EXAMPLES)]
        assert (config["judge"]["noise"], config["judge"]["position_bias"]) == (0.5, 0.25)
        assert config["faults"]["overloaded"] == 0.1 and config["faults"]["missing_item"] == 0.2
        assert config["limits"]["requests_per_minute"] == 100
        assert config["latency"]["per_item"] == 0.01
        assert (config["api_key"], config["batch_seconds"]) == ("***", 2.0)
        assert httpx.get(f"{base}/sim/counters").json()["calls"] == 0
        wrong = httpx.post(f"{base}/v1/chat/completions", json={}, headers={"x-api-key": "no"})
        assert wrong.status_code == 401
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_bad_fault_option_is_a_usage_error() -> None:
    done = subprocess.run(
        [*CLI, "--port", "1", "--fault", "gremlins=0.5"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "gremlins" in done.stderr or "NAME=RATE" in done.stderr
