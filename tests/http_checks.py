"""Checks both HTTP APIs share: a body that never arrives, and an OpenAPI document that resolves."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from fastapi import FastAPI

from tests.provider.support import eventually
from tests.services import free_port


async def answer_to_a_stalled_body(app: FastAPI, path: str, guard: float = 20.0) -> bytes:
    """Serve ``app`` on a real socket, POST headers declaring 2 MB but send 100 bytes, and
    return the status line the server answers (b"" if it closed without one). Raises
    ``TimeoutError`` if the server holds the connection past ``guard`` seconds."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        await eventually(lambda: server.started)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 2000000\r\n\r\n"
        )
        writer.write(head.encode() + b"{" + b" " * 99)
        await writer.drain()
        async with asyncio.timeout(guard):
            line = await reader.readline()
        writer.close()
        return line.strip()
    finally:
        server.should_exit = True
        await serving


def unresolved_refs(document: dict[str, Any]) -> list[str]:
    """Every ``$ref`` in an OpenAPI document that does not point at something in it."""

    def resolves(ref: str) -> bool:
        if not ref.startswith("#/"):
            return False
        node: Any = document
        for part in ref[2:].split("/"):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and not resolves(ref):
                found.append(ref)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)
    return found
