"""Signed verification answers by certificate id, built once and served again while nothing changed.

Building an answer costs a registry query and an Ed25519 signature, yet nearly every request asks
about a certificate whose registry rows have not moved since the last time. So each process keeps
the answers it built (not_found ones excepted: anyone can ask for any number of unknown ids) and
serves a kept answer byte for byte, its `checked_at` and signature included, while all of these hold:

- the registry's tracked position is still the one the answer was built at. That position is read
  again at most every `recheck_s`, so a revocation, a supersession, a visibility change or a renamed
  provider reaches the answers within the projection's lag plus `recheck_s` (0.5 s by default).
  A request with X-Min-Position past the kept answer's position is answered afresh (read-your-writes);
- the answer is at most `max_age_s` old, so that `checked_at` stays recent;
- it was signed by this process's signer: a key rotation restarts the service with a new signer,
  and with it a new, empty store of answers.

Hits take no lock and do no I/O (they run on the event loop); everything that reads the database
runs in a worker thread (`answer`, `observe`), and changes to what is kept happen under a lock.
Requests that miss the same answer at once (many clients, one certificate) build it once; on the
event loop (`answer_soon`) they await that one build rather than each wait for it in a thread. Under
steady traffic the position is read again halfway through `recheck_s` (`observation_due`), so hits
never find it stale: otherwise every request arriving while it is being read again would go to a
worker thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from werkzeug.http import parse_etags, quote_etag

from services.certificate.projections import CertificateRegistry
from services.certificate.signing import AnswerSigner
from services.certificate.verification import VerificationAnswer, canonical_certificate_id, verification_answer
from services.certificate.verify_page import render_verify_page

RECHECK_S = 0.5
# A shared cache may keep a valid answer this long too (Cache-Control max-age).
MAX_AGE_S = 60.0
# Each about 2 KB, plus 4 KB per page language asked: at most about 40 MB per process.
MAX_KEPT = 4096
# Builds of different ids rarely wait for each other with this many locks (a request builds at most one).
BUILD_LOCKS = 64


class AnswerSignature(BaseModel):
    jws: str
    kid: str
    jwks_url: str


class SignedVerificationAnswer(VerificationAnswer):
    """`signature.jws` is a detached JWS (EdDSA) over the canonical JSON of the answer without
    `signature` (sorted keys, no whitespace, UTF-8)."""

    signature: AnswerSignature


@dataclass(frozen=True)
class Representation:
    """A body ready to send, with its strong entity tag (from its bytes)."""

    body: bytes
    tag: str
    etag: bytes
    """The ETag header's value (the tag quoted), as sent."""

    @classmethod
    def of(cls, body: bytes) -> Representation:
        tag = hashlib.sha256(body).hexdigest()[:32]
        return cls(body, tag, quote_etag(tag).encode())

    def matches(self, if_none_match: str) -> bool:
        """RFC 9110 13.1.2: weak comparison; `*` matches any current representation."""
        return parse_etags(if_none_match).contains_weak(self.tag)


@dataclass(frozen=True)
class SignedAnswer:
    """One signed answer, its JSON ready to send; pages in each language are rendered on first use."""

    facts: dict[str, Any]
    """The answer as `verification_answer` gives it: without the signature."""
    json: Representation
    pages: dict[str, Representation] = field(default_factory=dict, compare=False)

    @property
    def state(self) -> str:
        return str(self.facts["state"])

    def page(self, locale: str) -> Representation:
        page = self.pages.get(locale)
        if page is None:
            # The page may show a revocation reason; public answers never carry one.
            html = render_verify_page({**self.facts, "revocation_reason": None}, locale=locale)
            page = self.pages[locale] = Representation.of(html.encode("utf-8"))
        return page


@dataclass(frozen=True)
class _Kept:
    answer: SignedAnswer
    position: int
    """The registry reflected at least this position when the answer was built."""
    built_at: float


@dataclass(frozen=True)
class _Observation:
    position: int
    at: float
    """When the read of `position` began: everything projected before then is reflected."""


class SignedAnswers:
    """Signs answers, and keeps those of issued certificates while the registry has not moved."""

    def __init__(
        self,
        registry: CertificateRegistry,
        signer: AnswerSigner,
        *,
        jwks_url: str,
        upstream: str,
        catch_up: Callable[[int], None],
        recheck_s: float = RECHECK_S,
        max_age_s: float = MAX_AGE_S,
        max_kept: int = MAX_KEPT,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """`upstream`: the application whose position the registry tracks; `catch_up(position)`
        waits until the registry has that position (read-your-writes) or raises."""
        self._registry = registry
        self.signer = signer
        self._jwks_url = jwks_url
        self._upstream = upstream
        self._catch_up = catch_up
        self._recheck_s = recheck_s
        self._max_age_s = max_age_s
        self._max_kept = max_kept
        self._clock = clock
        self._now = now
        # Only answers built at the observed position (kept and emptied under `_changing`), in the
        # order built: the first is the oldest, the one to drop when full.
        self._kept: dict[str, _Kept] = {}
        self._observation = _Observation(position=0, at=float("-inf"))  # read on first use
        self._observation_asked = False  # an `observe` is due and not done yet
        self._awaited: dict[tuple[str, int | None], asyncio.Future[SignedAnswer]] = {}  # builds by what was asked
        self._changing = threading.Lock()  # what is kept and the observation
        self._observing = threading.Lock()  # one read of the position at a time
        self._building = [threading.Lock() for _ in range(BUILD_LOCKS)]  # by id: one build of an answer at a time

    def kept(self, certificate_id: str, min_position: int | None = None) -> SignedAnswer | None:
        """The kept answer for this id if it may be served now; no I/O, no lock."""
        kept = self._kept.get(certificate_id)
        if kept is None:
            canonical_id = canonical_certificate_id(certificate_id)
            kept = self._kept.get(canonical_id) if canonical_id and canonical_id != certificate_id else None
        if kept is None:
            return None
        now = self._clock()
        servable = (
            now - self._observation.at <= self._recheck_s
            and now - kept.built_at <= self._max_age_s
            and (min_position is None or min_position <= kept.position)
        )
        return kept.answer if servable else None

    async def answer_soon(self, certificate_id: str, min_position: int | None = None) -> SignedAnswer:
        """`answer` for the event loop: a kept answer at once, otherwise built in a worker thread;
        requests asking the same while it is built await that build, without a thread each."""
        if self.observation_due():
            await run_in_threadpool(self.observe)
        kept = self.kept(certificate_id, min_position)
        if kept is not None:
            return kept
        asked = (certificate_id, min_position)
        build = self._awaited.get(asked)
        if build is None:
            build = self._awaited[asked] = asyncio.ensure_future(
                run_in_threadpool(self.answer, certificate_id, min_position)
            )
            build.add_done_callback(lambda _: self._awaited.pop(asked, None))
        # Shielded: a request that goes away does not cancel the build the others await.
        return await asyncio.shield(build)

    def observation_due(self) -> bool:
        """True, once until `observe` has run, when the position was read more than half `recheck_s`
        ago: the caller then runs `observe` in a worker thread. No I/O, no lock: call it from one
        thread only (the event loop)."""
        if self._observation_asked or self._clock() - self._observation.at <= self._recheck_s / 2:
            return False
        self._observation_asked = True
        return True

    def observe(self) -> None:
        """Reads the registry's position again (blocking: reads the database); see `observation_due`."""
        try:
            self._observe(older_than_s=self._recheck_s / 2)
        finally:
            self._observation_asked = False

    def answer(self, certificate_id: str, min_position: int | None = None) -> SignedAnswer:
        """The answer for an id as asked, kept or built afresh (blocking: reads the database).

        Raises what `catch_up` raises when X-Min-Position cannot be met.
        """
        if min_position is not None and min_position > self._observation.position:
            self._catch_up(min_position)
            self._observe(older_than_s=None)
        canonical_id = canonical_certificate_id(certificate_id)
        if canonical_id is None:
            return self.signed(verification_answer(None, asked_id=certificate_id, checked_at=self._now()))
        self._observe(older_than_s=self._recheck_s)
        # Requests that missed the same answer together wait for the first one to build it.
        with self._building[hash(canonical_id) % len(self._building)]:
            kept = self.kept(canonical_id, min_position)
            if kept is not None:
                return kept
            # Observed before the certificate is read: its row reflects at least this position.
            position = self._observation.position
            certificate = self._registry.get(canonical_id)
            answer = self.signed(verification_answer(certificate, asked_id=canonical_id, checked_at=self._now()))
            if certificate is not None:
                self._keep(canonical_id, _Kept(answer, position, built_at=self._clock()))
            return answer

    def signed(self, answer: dict[str, Any]) -> SignedAnswer:
        """Signs an answer that is not kept (e.g. that of a checked file)."""
        signature = AnswerSignature(jws=self.signer.sign(answer), kid=self.signer.active_kid, jwks_url=self._jwks_url)
        signed = {**answer, "signature": signature.model_dump()}
        body = json.dumps(signed, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
        return SignedAnswer(answer, Representation.of(body))

    def _observe(self, *, older_than_s: float | None) -> None:
        """Reads the registry's position if the last read began more than `older_than_s` ago (None: in
        any case); requests that wait here while another one reads use its result."""
        asked_at = self._clock()
        with self._observing:
            if older_than_s is not None and self._observation.at >= asked_at - older_than_s:
                return
            began = self._clock()
            position = self._registry.tracked_position(self._upstream)
            with self._changing:
                if position != self._observation.position:
                    self._kept.clear()
                self._observation = _Observation(position, began)

    def _keep(self, certificate_id: str, kept: _Kept) -> None:
        with self._changing:
            if kept.position != self._observation.position:
                return  # the registry moved on while this one was built
            self._kept.pop(certificate_id, None)
            self._kept[certificate_id] = kept
            while len(self._kept) > self._max_kept:
                del self._kept[next(iter(self._kept))]
