"""What stands in front of both HTTP APIs: the bearer token, the body limit and its deadline.

The rule: a request is let in only with the configured token (when one is set), and only
once its whole body has arrived — within ``max_bytes`` and within ``read_timeout`` seconds.
A body over the limit is refused with 413 as soon as that is known (from ``Content-Length``
or while it streams); one that does not arrive in time is refused with 408 and its
connection closed, so a slow or stalled client cannot hold a server slot. Refusals have
FastAPI's error shape, ``{"detail": [{"loc": [...], "msg": ..., "type": ...}]}``.

Used by ``cjllm.provider.api`` and ``cjllm.cj.api``; :func:`serve` runs either app under
uvicorn with the same connection settings.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Callable
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# an idle keep-alive connection is held longer than clients keep theirs in a pool (httpx 5 s,
# aiohttp 15 s), so the server is never the one closing a connection a client is reusing
KEEP_ALIVE_SECONDS = 75


def error_body(loc: list[str | int], msg: str, kind: str) -> dict[str, Any]:
    return {"detail": [{"loc": loc, "msg": msg, "type": kind}]}


class BodyLimit:
    """ASGI middleware: read each HTTP request's body in full, within ``max_bytes`` and
    ``read_timeout`` seconds, before the app sees the request (see the module docstring).
    ``setting`` names the environment variable of the limit, for the 413 message."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, read_timeout: float, setting: str) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout = read_timeout
        self.setting = setting

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = f"the request body is over {self.max_bytes} bytes ({self.setting})"
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await _refuse(send, 413, too_big, "request_too_large")
            return
        body = bytearray()
        try:
            async with asyncio.timeout(self.read_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    body += message.get("body", b"")
                    if len(body) > self.max_bytes:
                        await _refuse(send, 413, too_big, "request_too_large")
                        return
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            msg = f"the request body did not arrive within {self.read_timeout:g}s"
            await _refuse(send, 408, msg, "request_timeout")
            return
        await self.app(scope, _replay(bytes(body), receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app the body already read, then the real channel."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _refuse(send: Send, status: int, msg: str, kind: str) -> None:
    payload = json.dumps(error_body([], msg, kind)).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <token>`")


def bearer_check(token: str | None, setting: str) -> Callable[[str | None], None]:
    """A check of an ``Authorization`` header value that lets a request in only with
    ``token`` (when one is set), raising 401 otherwise; ``setting`` names the environment
    variable that sets it, for the operator. Cheaper than the dependency below: a hot route
    calls it itself (and declares the scheme with ``openapi_extra=BEARER_SECURITY``)."""

    def check(header: str | None) -> None:
        if token is None:
            return
        scheme, _, given = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            given.strip().encode(), token.encode()
        ):
            raise HTTPException(
                401,
                detail=[
                    {
                        "loc": ["header", "authorization"],
                        "msg": f"a valid bearer token is required ({setting})",
                        "type": "unauthorized",
                    }
                ],
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check


BEARER_SECURITY: dict[str, Any] = {"security": [{"HTTPBearer": []}]}
"""``openapi_extra`` of a route that calls :func:`bearer_check` itself."""


def bearer_token(token: str | None, setting: str) -> Callable[..., Any]:
    """A FastAPI dependency that lets a request in only with ``token`` (when one is set).

    ``setting`` names the environment variable that sets it, for the operator; the OpenAPI
    document declares the bearer scheme either way.
    """
    verify = bearer_check(token, setting)

    async def check(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        verify(None if credentials is None else f"Bearer {credentials.credentials}")

    return check


def serve(app: ASGIApp, host: str, port: int) -> uvicorn.Server:
    """The uvicorn server both services run their API with."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="off",
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        access_log=False,  # a line per comparison; /metrics counts requests by outcome
    )
    return uvicorn.Server(config)
