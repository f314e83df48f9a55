"""Stored events for the benchmarks, made the way the service makes them, loaded in bulk.

Real aggregates run real commands; the library's mapper turns their events into stored events
(same topics, same transcoding as the service); COPY writes them into the events table. Each
COPY takes the table lock and notifies, like the library's own inserts, so a running projection
sees a consistent log.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cache
from itertools import repeat
from typing import Any
from uuid import UUID, uuid4

import psycopg
from eventsourcing.persistence import Mapper

from services.booking.application import BookingApplication
from services.booking.domain import Actor, Booking, Product, Provider, Status

STAFF = Actor("staff-bench", "staff")
EVENTS_TABLE = f"{BookingApplication.name}_events"
CHUNK = 20_000  # bookings per COPY transaction


@dataclass(frozen=True)
class CatalogEntry:
    provider_id: UUID
    product_id: UUID


@cache
def mapper() -> Mapper[UUID]:
    """The service's mapper (same transcodings), on in-memory infrastructure: no connection needed."""
    return BookingApplication(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}).mapper


def catalog(count: int) -> tuple[list[CatalogEntry], list[Any]]:
    """`count` providers, each with one product that has a certification."""
    entries, events = [], []
    for n in range(count):
        provider = Provider(
            id=uuid4(), name=f"Provider {n}", linkedin_organization_id=str(1000 + n), logo_url=None,
            actor_id=STAFF.id, actor_role=STAFF.role,
        )  # fmt: skip
        product = Product(
            id=uuid4(), provider_id=provider.id, title=f"Course {n}", actor_id=STAFF.id, actor_role=STAFF.role
        )
        product.define_certification(f"Certified {n}", STAFF)
        entries.append(CatalogEntry(provider.id, product.id))
        events += [*provider.collect_events(), *product.collect_events()]
    return entries, events


def bookings(
    entries: Sequence[CatalogEntry], count: int, *, completed: bool, first: int = 0
) -> tuple[list[UUID], list[Any]]:
    """Accepted bookings, round-robin over `entries`; `completed` ones also went through started,
    completed and a review (five events)."""
    ids, events = [], []
    for n in range(first, first + count):
        entry = entries[n % len(entries)]
        provider_actor = Actor(f"provider-user-{entry.provider_id}", "provider")
        participant = {"id": f"participant-{n}", "name": "Anna Svensson", "email": f"p{n}@example.se", "locale": "sv"}
        booking = Booking(
            id=uuid4(), product_id=entry.product_id, provider_id=entry.provider_id, participant=participant,
            employer_id=f"employer-{n % 500}", actor_id=participant["id"], actor_role="participant",
        )  # fmt: skip
        booking.accept(provider_actor)
        if completed:
            booking.change_status(Status.STARTED, provider_actor)
            booking.change_status(Status.COMPLETED, provider_actor)
            booking.submit_review(5, "Very useful.", Actor(participant["id"], "participant"))
        ids.append(booking.id)
        events += booking.collect_events()
    return ids, events


def store(database_url: str, events: Sequence[Any]) -> int:
    """COPYs the events (in this order) into the booking events table; returns how many."""
    to_stored = mapper().to_stored_event
    with psycopg.connect(database_url) as conn, conn.transaction(), conn.cursor() as cursor:
        cursor.execute(f"LOCK TABLE {EVENTS_TABLE} IN EXCLUSIVE MODE")
        copy_sql = f"COPY {EVENTS_TABLE} (originator_id, originator_version, topic, state) FROM STDIN (FORMAT BINARY)"
        with cursor.copy(copy_sql) as copy:
            copy.set_types(["uuid", "int8", "text", "bytea"])
            for event in events:
                stored = to_stored(event)
                copy.write_row((stored.originator_id, stored.originator_version, stored.topic, stored.state))
        cursor.execute(f"NOTIFY {EVENTS_TABLE}")
    return len(events)


def _load_chunk(database_url: str, entries: Sequence[CatalogEntry], count: int, first: int) -> int:
    _, events = bookings(entries, count, completed=True, first=first)
    return store(database_url, events)


def bulk_load(database_url: str, entries: Sequence[CatalogEntry], count: int) -> int:
    """`count` completed and reviewed bookings spread over `entries`, generated on every core."""
    firsts = range(0, count, CHUNK)
    sizes = [min(CHUNK, count - first) for first in firsts]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return sum(pool.map(_load_chunk, repeat(database_url), repeat(entries), sizes, firsts))
