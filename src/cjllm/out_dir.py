"""The ``--out`` folder of ``cjllm rank``: one run's state, and who may use it.

``run.json`` records the batch id and a fingerprint of the inputs that define the run, so a
re-run can tell "resume this" from "these are other essays". ``.cjllm.lock`` holds an
exclusive lock while a process works in the folder, so two runs never share one queue and
database — and so a lease found there at start-up is known to be stale.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

RUN_FILE = "run.json"
RUN_FILE_VERSION = 2  # 2: the fingerprint names the judge and its mode
LOCK_FILE = ".cjllm.lock"


class OutDirError(Exception):
    """The folder cannot be used as it is; the message says what to do."""


class OutDirBusy(OutDirError):
    """Another process is using the same ``--out`` folder."""


@contextmanager
def locked_out_dir(out_dir: Path) -> Iterator[Path]:
    """Hold an exclusive lock on ``out_dir`` (created if needed) for this process."""
    out_dir.mkdir(parents=True, exist_ok=True)
    handle: IO[str] = (out_dir / LOCK_FILE).open("a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutDirBusy(
                f"{out_dir} is in use by another cjllm process; wait for it or use another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield out_dir
    finally:
        handle.close()


def read_run_file(out_dir: Path) -> dict[str, Any] | None:
    """The recorded run (``{"version", "batch_id", "inputs", ...}``), or None for a new folder."""
    path = out_dir / RUN_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OutDirError(f"{path} is unreadable ({exc}); delete {out_dir} to start over") from exc
    if not isinstance(data, dict) or data.get("version") != RUN_FILE_VERSION:
        raise OutDirError(
            f"{path} was written by another version of cjllm (run file version "
            f"{data.get('version') if isinstance(data, dict) else '?'}, this one reads "
            f"{RUN_FILE_VERSION}), so its run cannot be resumed; use another --out, or delete "
            f"{out_dir} to start over"
        )
    return data


def write_run_file(out_dir: Path, data: Mapping[str, Any]) -> None:
    """Record the run (atomically); ``version`` is added."""
    path = out_dir / RUN_FILE
    tmp = path.with_name(f".{RUN_FILE}.tmp")
    tmp.write_text(json.dumps({"version": RUN_FILE_VERSION, **data}, indent=2) + "\n", "utf-8")
    os.replace(tmp, path)


def forget_run(out_dir: Path) -> None:
    (out_dir / RUN_FILE).unlink(missing_ok=True)


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The keys whose values differ between two fingerprints, sorted."""
    return [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
