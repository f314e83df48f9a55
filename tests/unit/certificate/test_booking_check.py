"""`BookingCheck`: the booking service is asked before a file is stored, and its refusal wins."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID, uuid4

import pytest

from services.certificate.api import BookingCheck
from services.certificate.booking_gateway import BookingRefused
from shared.errors import Invalid


class Gateway:
    """Answers checks as told; remembers what it was asked."""

    def __init__(self, *, refuse: bool = False, delay_s: float = 0.01) -> None:
        self.refuse = refuse
        self.delay_s = delay_s
        self.asked: list[bool] = []
        self.dropped = False

    async def check_upload(self, authorization: str, booking_id: UUID, *, contains_results: bool) -> None:
        self.asked.append(contains_results)
        try:
            await asyncio.sleep(self.delay_s)
        except asyncio.CancelledError:
            self.dropped = True
            raise
        if self.refuse:
            raise BookingRefused(409, "booking_not_completed", "The booking is not completed.")


def check_of(gateway: Gateway) -> BookingCheck:
    return BookingCheck(gateway, "Bearer provider", uuid4())  # type: ignore[arg-type]


def run(block: Any) -> None:
    asyncio.run(block())


def test_a_refusal_of_the_block_asks_the_booking_service_whose_refusal_wins() -> None:
    gateway = Gateway(refuse=True)

    async def upload() -> None:
        async with check_of(gateway).refusal_first():
            raise Invalid("Not a PDF.")

    with pytest.raises(BookingRefused):
        run(upload)
    assert gateway.asked == [False]


def test_the_block_refusal_stands_when_the_booking_service_agrees() -> None:
    gateway = Gateway()

    async def upload() -> None:
        async with check_of(gateway).refusal_first():
            raise Invalid("Not a PDF.")

    with pytest.raises(Invalid):
        run(upload)


def test_asked_once_and_the_block_waits_for_the_answer_before_it_goes_on() -> None:
    gateway = Gateway(refuse=True)
    steps = []

    async def upload() -> None:
        check = check_of(gateway)
        async with check.refusal_first():
            check.ask(contains_results=True)
            steps.append("file checked")
            await check.answered()
            steps.append("file stored")

    with pytest.raises(BookingRefused):
        run(upload)
    assert steps == ["file checked"]
    assert gateway.asked == [True]


def test_not_asked_when_the_block_neither_asks_nor_refuses() -> None:
    gateway = Gateway(refuse=True)

    async def upload() -> None:
        check = check_of(gateway)
        async with check.refusal_first():
            await check.answered()

    run(upload)
    assert gateway.asked == []


def test_a_refusal_by_the_booking_service_itself_is_not_asked_again() -> None:
    gateway = Gateway()

    async def upload() -> None:
        async with check_of(gateway).refusal_first():
            raise BookingRefused(404, "not_found", "No such booking.")  # as the record answers

    with pytest.raises(BookingRefused):
        run(upload)
    assert gateway.asked == []


def test_leaving_the_block_otherwise_drops_an_unanswered_check() -> None:
    gateway = Gateway(delay_s=10)

    async def upload() -> None:
        try:
            check = check_of(gateway)
            async with check.refusal_first():
                check.ask(contains_results=False)
                await asyncio.sleep(0)  # the check is under way
                raise RuntimeError("the client went away")
        except RuntimeError:
            await asyncio.sleep(0)  # the cancellation lands

    run(upload)
    assert gateway.dropped
