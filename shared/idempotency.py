"""Idempotency-Key support for every command (POST/PUT/PATCH/DELETE).

The first request with a key is run and its answer stored; a retry with the same key and the
same request gets the stored answer and runs nothing. A retry with a different request is
refused (422), a retry while the first is still running gets 409. Keys are scoped by caller.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import structlog
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.auth import TokenVerifier
from shared.errors import AppError, Conflict, Invalid
from shared.http import STORE_UNAVAILABLE_ERRORS, header, unavailable_response
from shared.views import SqlStore

log = structlog.get_logger(__name__)

HEADER = b"idempotency-key"
MAX_KEY_LENGTH = 200
# A request that died mid-way leaves a pending key; after this long a retry may take it over.
PENDING_TAKEOVER = timedelta(seconds=60)
# Bodies larger than this (file uploads) are identified by their length, not hashed in memory.
MAX_HASHED_BODY = 1 << 20


class IdempotencyStore(SqlStore):
    # `claim` names the request that holds a pending key (a fresh token per request).
    tables = (
        "CREATE TABLE IF NOT EXISTS idempotency_keys ("
        " scope_key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, status_code INTEGER,"
        " headers TEXT, body TEXT, started_at TEXT NOT NULL, claim TEXT NOT NULL)",
    )

    def begin(self, scope_key: str, fingerprint: str) -> dict[str, Any] | None:
        """Claims the key; returns the stored answer if the request already ran."""
        now = datetime.now(UTC)
        claim = uuid4().hex
        with self._statement_cursor() as cursor:
            self.execute(
                cursor,
                "INSERT INTO idempotency_keys (scope_key, fingerprint, started_at, claim) VALUES (:k, :f, :t, :c) "
                "ON CONFLICT (scope_key) DO UPDATE SET fingerprint = :f, started_at = :t, claim = :c "
                "WHERE idempotency_keys.status_code IS NULL AND idempotency_keys.started_at < :stale "
                "RETURNING scope_key",
                {
                    "k": scope_key,
                    "f": fingerprint,
                    "t": now.isoformat(),
                    "c": claim,
                    "stale": (now - PENDING_TAKEOVER).isoformat(),
                },
            )
            if cursor.fetchone() is not None:  # a new key, or one whose request died (taken over): ours to run
                return None
            self.execute(cursor, "SELECT * FROM idempotency_keys WHERE scope_key = :k", {"k": scope_key})
            found = cursor.fetchone()
        row = dict(found) if found is not None else None  # None: released meanwhile by a failed first request
        if row is not None and row["fingerprint"] != fingerprint:
            raise Invalid(
                "This Idempotency-Key was used for a different request; use a new key.",
                code="idempotency_key_reused",
            )
        if row is None or row["status_code"] is None:
            raise Conflict(
                "A request with this Idempotency-Key is still being processed; retry shortly.",
                code="idempotency_in_progress",
            )
        return row

    def complete(self, scope_key: str, status_code: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        with self._statement_cursor() as cursor:
            self.execute(
                cursor,
                "UPDATE idempotency_keys SET status_code = :s, headers = :h, body = :b WHERE scope_key = :k",
                {
                    "k": scope_key,
                    "s": status_code,
                    "h": json.dumps([[k.decode("latin-1"), v.decode("latin-1")] for k, v in headers]),
                    "b": body.decode("utf-8"),
                },
            )

    def release(self, scope_key: str) -> None:
        """The request failed on our side (5xx): let a retry run it again."""
        with self._statement_cursor() as cursor:
            self.execute(
                cursor, "DELETE FROM idempotency_keys WHERE scope_key = :k AND status_code IS NULL", {"k": scope_key}
            )


class IdempotencyMiddleware:
    """Pure ASGI middleware, so that the stored answer is exactly what was sent.

    The store's calls block on the database: they run in the thread pool, never on the event loop
    (one commit there would stall every request of the process for its flush).

    The store and the token verifier are taken from `app.state` (`idempotency`, `verifier`),
    which the service opens at start-up.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        key = header(scope, HEADER)
        authorization = header(scope, b"authorization") or b""
        # Without a bearer token there is no caller to scope the key by: public endpoints have no
        # side effects, and protected ones answer 401 by themselves.
        if key is None or not authorization.lower().startswith(b"bearer "):
            await self.app(scope, receive, send)
            return
        state = scope["app"].state
        store: IdempotencyStore = state.idempotency
        try:
            scope_key, receive, fingerprint = await self._identify(state.verifier, authorization, scope, receive, key)
            stored = await run_in_threadpool(store.begin, scope_key, fingerprint)
        except AppError as error:
            await _send_error(send, error)
            return
        except STORE_UNAVAILABLE_ERRORS as error:  # out here, the app's exception handlers do not apply
            await unavailable_response(error)(scope, receive, send)
            return
        if stored is not None:
            await _replay(send, stored)
            return
        await self._run_and_store(store, scope, receive, send, scope_key)

    async def _identify(
        self, verifier: TokenVerifier, authorization: bytes, scope: Scope, receive: Receive, key: bytes
    ) -> tuple[str, Receive, str]:
        text_key = key.decode("latin-1").strip()
        if not text_key or len(text_key) > MAX_KEY_LENGTH:
            raise Invalid(
                f"The Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters.", code="invalid_idempotency_key"
            )
        caller = (await verifier.verify_on_loop(authorization[7:].decode("latin-1").strip())).sub
        declared_length = header(scope, b"content-length") or b"0"
        length = int(declared_length) if declared_length.isdigit() else MAX_HASHED_BODY + 1
        digest = hashlib.sha256(f"{scope['method']} {scope['path']}?{scope.get('query_string', b'').decode()}".encode())
        if length <= MAX_HASHED_BODY:
            body = await _read_body(receive)
            digest.update(_without_multipart_boundary(body, header(scope, b"content-type") or b""))
            receive = _replaying(body)
        else:
            digest.update(f"length={length}".encode())
        scope_key = hashlib.sha256(f"{caller}\n{text_key}".encode()).hexdigest()
        return scope_key, receive, digest.hexdigest()

    async def _run_and_store(
        self, store: IdempotencyStore, scope: Scope, receive: Receive, send: Send, scope_key: str
    ) -> None:
        start: Message = {}
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            status = start.get("status", 500)
            try:
                if status >= 500:
                    await run_in_threadpool(store.release, scope_key)
                else:
                    await run_in_threadpool(
                        store.complete, scope_key, status, list(start.get("headers", [])), b"".join(chunks)
                    )
            except STORE_UNAVAILABLE_ERRORS as error:
                # The answer is sent; the key stays pending (a retry gets 409) until PENDING_TAKEOVER.
                log.warning("idempotency key left pending", error=type(error).__name__, status=status)


def _without_multipart_boundary(body: bytes, content_type: bytes) -> bytes:
    """A client that rebuilds a multipart retry picks a new random boundary: same request all the same."""
    if not content_type.lower().startswith(b"multipart/"):
        return body
    for parameter in content_type.split(b";")[1:]:
        name, _, value = parameter.strip().partition(b"=")
        if name.lower() == b"boundary" and value.strip(b'"'):
            return body.replace(value.strip(b'"'), b"")
    return body


async def _read_body(receive: Receive) -> bytes:
    parts: list[bytes] = []
    while True:
        message = await receive()
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(parts)


def _replaying(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def _replay(send: Send, stored: dict[str, Any]) -> None:
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in json.loads(stored["headers"])]
    headers.append((b"idempotent-replayed", b"true"))
    await send({"type": "http.response.start", "status": stored["status_code"], "headers": headers})
    await send({"type": "http.response.body", "body": stored["body"].encode("utf-8")})


async def _send_error(send: Send, error: AppError) -> None:
    body = json.dumps(error.body()).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.status_code,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
