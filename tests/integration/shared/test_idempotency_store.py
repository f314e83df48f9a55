"""The idempotency store's claims, on SQLite and PostgreSQL: who runs a keyed request, and when."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from shared import idempotency
from shared.errors import AppError
from shared.idempotency import IdempotencyStore
from shared.settings import ServiceSettings
from shared.views import open_store


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
