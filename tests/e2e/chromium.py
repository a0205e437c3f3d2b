"""Headless Debian Chromium for rendering the report page in tests (fails, never skips), and
a small PNG reader so a test can look at its screenshots."""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise AssertionError("chromium not found: apt-get install chromium (Debian package)")
    return exe


def run_chromium(page: Path, *args: str, timeout: float = 120.0) -> str:
    """Load ``page`` in a fresh profile with ``args`` (e.g. ``--dump-dom``); return stdout."""
    with tempfile.TemporaryDirectory(prefix="cjllm-chromium-") as profile:
        proc = subprocess.run(
            [chromium(), *FLAGS, f"--user-data-dir={profile}", *args, page.resolve().as_uri()],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    if proc.returncode != 0:
        raise AssertionError(f"chromium exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc.stdout


@dataclass(frozen=True)
class Image:
    """A decoded screenshot: ``pixel(x, y)`` is (r, g, b)."""

    width: int
    height: int
    channels: int
    rows: list[bytes]

    def pixel(self, x: int, y: int) -> tuple[int, int, int]:
        row, i = self.rows[y], x * self.channels
        return row[i], row[i + 1], row[i + 2]

    def region(
        self, left: float, top: float, right: float, bottom: float
    ) -> list[tuple[int, int, int]]:
        """Every pixel of a rectangle (CSS pixels = image pixels at scale 1), clipped."""
        x0, y0 = max(0, int(left)), max(0, int(top))
        x1, y1 = min(self.width, int(right) + 1), min(self.height, int(bottom) + 1)
        return [self.pixel(x, y) for y in range(y0, y1) for x in range(x0, x1)]


def read_png(data: bytes) -> Image:
    """Decode an 8-bit, non-interlaced RGB/RGBA PNG (what Chromium writes) with the standard
    library: the IDAT stream inflated, then each row's filter undone."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and color in (2, 6) and interlace == 0, (depth, color, interlace)
    channels = 3 if color == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, data_row = raw[start], raw[start + 1 : start + 1 + stride]
        if kind == 0:  # None: the bytes are the pixels (Chromium's usual choice)
            line = bytearray(data_row)
        elif kind == 1:  # Sub: a running sum along the row, per channel
            pixels = np.frombuffer(data_row, dtype=np.uint8).reshape(width, channels)
            line = bytearray(np.cumsum(pixels, axis=0, dtype=np.uint64).astype(np.uint8).tobytes())
        elif kind == 2:  # Up
            up = np.frombuffer(data_row, np.uint8) + np.frombuffer(bytes(previous), np.uint8)
            line = bytearray(up.tobytes())
        else:  # Average, Paeth: pixel by pixel
            line = _unfilter(kind, bytearray(data_row), previous, channels)
        rows.append(bytes(line))
        previous = line
    return Image(width, height, channels, rows)


def _unfilter(kind: int, line: bytearray, previous: bytearray, channels: int) -> bytearray:
    for i in range(len(line)):
        a = line[i - channels] if i >= channels else 0
        b = previous[i]
        c = previous[i - channels] if i >= channels else 0
        if kind == 3:
            line[i] = (line[i] + (a + b) // 2) & 0xFF
        elif kind == 4:
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
            line[i] = (line[i] + pred) & 0xFF
    return line
