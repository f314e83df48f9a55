"""The idempotency store's claims, on SQLite and PostgreSQL: who runs a keyed request, and when."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from shared import idempotency
from shared.errors import AppError
from shared.idempotency import IdempotencyStore
from shared.settings import ServiceSettings
from shared.views import open_store

STARTING_TOGETHER = 8
ROUNDS_ON_EMPTY_DATABASES = 5


@pytest.fixture
def keys(service_env: dict[str, Any]) -> Iterator[IdempotencyStore]:
    store = open_store(ServiceSettings(**service_env), IdempotencyStore, "idempotency_test")
    yield store
    store.datastore.close()


def refusal(call: Any) -> tuple[int, str]:
    with pytest.raises(AppError) as raised:
        call()
    return raised.value.status_code, raised.value.code


def test_a_new_key_is_claimed_once_and_then_replays_its_answer(keys: IdempotencyStore) -> None:
    assert keys.begin("caller-key", "POST /x") is None
    assert refusal(lambda: keys.begin("caller-key", "POST /x")) == (409, "idempotency_in_progress")
    assert refusal(lambda: keys.begin("caller-key", "POST /y")) == (422, "idempotency_key_reused")

    keys.complete("caller-key", 201, [(b"content-type", b"application/json")], b'{"ok": true}')
    stored = keys.begin("caller-key", "POST /x")
    assert stored is not None
    assert (stored["status_code"], stored["body"]) == (201, '{"ok": true}')
    assert refusal(lambda: keys.begin("caller-key", "POST /y")) == (422, "idempotency_key_reused")


def test_a_released_key_is_claimed_again(keys: IdempotencyStore) -> None:
    assert keys.begin("caller-key", "POST /x") is None
    keys.release("caller-key")
    assert keys.begin("caller-key", "POST /x") is None


def test_a_pending_key_is_taken_over_once_its_request_is_presumed_dead(
    keys: IdempotencyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert keys.begin("caller-key", "POST /x") is None
    monkeypatch.setattr(idempotency, "PENDING_TAKEOVER", timedelta(0))
    assert keys.begin("caller-key", "POST /x") is None
    keys.complete("caller-key", 200, [], b"{}")
    stored = keys.begin("caller-key", "POST /x")
    assert stored is not None and stored["status_code"] == 200


def test_processes_starting_together_on_an_empty_database_all_get_the_store(postgres_admin_url: str) -> None:
    """API replicas started at once each create the store's tables: PostgreSQL fails concurrent
    CREATE TABLE IF NOT EXISTS of one table (a unique violation on its row type) unless they take turns."""
    base = postgres_admin_url.rsplit("/", 1)[0]
    for _ in range(ROUNDS_ON_EMPTY_DATABASES):
        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(postgres_admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            settings = ServiceSettings(database_url=f"{base}/{name}", auth_secret="x" * 32)
            start = threading.Barrier(STARTING_TOGETHER)

            def open_when_all_ready(
                start: threading.Barrier = start, settings: ServiceSettings = settings
            ) -> IdempotencyStore:
                start.wait()
                return open_store(settings, IdempotencyStore, "idempotency_test")

            with ThreadPoolExecutor(STARTING_TOGETHER) as pool:
                stores = list(pool.map(lambda _: open_when_all_ready(), range(STARTING_TOGETHER)))
            for opened in stores:
                opened.datastore.close()
        finally:
            with psycopg.connect(postgres_admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
