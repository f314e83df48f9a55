"""`answered_first`: the booking service is asked while an upload arrives, and its refusal wins."""

from __future__ import annotations

import asyncio

import pytest

from services.certificate.api import answered_first
from shared.errors import Conflict, Invalid


async def refusal() -> None:
    raise Conflict("The booking is not completed.")


async def approval() -> None:
    await asyncio.sleep(0.01)


def test_a_refused_question_wins_over_the_block_refusal() -> None:
    async def upload() -> None:
        async with answered_first(refusal()):
            raise Invalid("Not a PDF.")

    with pytest.raises(Conflict):
        asyncio.run(upload())


def test_the_block_refusal_stands_when_the_question_is_approved() -> None:
    async def upload() -> None:
        async with answered_first(approval()):
            raise Invalid("Not a PDF.")

    with pytest.raises(Invalid):
        asyncio.run(upload())


def test_the_block_awaits_the_answer_before_it_goes_on() -> None:
    steps = []

    async def upload() -> None:
        async with answered_first(refusal()) as answer:
            steps.append("file checked")
            await answer
            steps.append("file stored")

    with pytest.raises(Conflict):
        asyncio.run(upload())
    assert steps == ["file checked"]


def test_leaving_the_block_otherwise_drops_an_unanswered_question() -> None:
    dropped = []

    async def slow_question() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            dropped.append(True)
            raise

    async def upload() -> list[bool]:
        try:
            async with answered_first(slow_question()):
                await asyncio.sleep(0)  # the question is under way
                raise RuntimeError("the client went away")
        except RuntimeError:
            await asyncio.sleep(0)  # the cancellation lands
        return dropped

    assert asyncio.run(upload()) == [True]
