"""Booking application: the commands of the booking service and who may run them."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID, uuid4

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError

from services.booking.domain import Actor, Booking, CertificateFile, Product, Provider, Status
from shared.auth import Principal, Role
from shared.errors import Conflict, Forbidden, NotFound, PreconditionFailed

MAX_CONCURRENCY_RETRIES = 20

AggregateT = TypeVar("AggregateT", Provider, Product, Booking)


@dataclass(frozen=True)
class CommandResult:
    """The aggregate after a command, and the position of its last new event (None: nothing changed)."""

    aggregate: Any
    position: int | None


def actor_of(principal: Principal, on_behalf_of: Actor | None = None) -> Actor:
    """Services act on behalf of the person who called them; everyone else acts as themself."""
    if on_behalf_of is not None and principal.role is Role.SERVICE:
        return on_behalf_of
    return Actor(id=principal.sub, role=principal.role.value)


def can_see_booking(principal: Principal, booking: Booking) -> bool:
    match principal.role:
        case Role.STAFF | Role.SERVICE:
            return True
        case Role.PROVIDER:
            return principal.provider_id == str(booking.provider_id)
        case Role.PARTICIPANT:
            return principal.sub == booking.participant_id
        case Role.EMPLOYER:
            return booking.employer_id is not None and principal.employer_id == booking.employer_id
    return False


def project_aggregate(aggregate: Aggregate | None, events: Iterable[Aggregate.Event]) -> Aggregate | None:
    """The library's default projector without its per-event `isinstance(event, CanMutateProtocol)`
    assertion: that runtime Protocol check costs 18-26 us per event (Python 3.11 and 3.12 alike),
    paid for every event of every aggregate a command loads."""
    for event in events:
        aggregate = event.mutate(aggregate)
    return aggregate


def may_manage_provider(principal: Principal, provider_id: UUID) -> bool:
    return principal.is_trusted or principal.provider_id == str(provider_id)


class BookingApplication(Application[UUID]):
    name = "booking"

    # --- catalog -------------------------------------------------------------------------------

    def register_provider(
        self,
        principal: Principal,
        *,
        provider_id: UUID | None,
        name: str,
        linkedin_organization_id: str | None,
        logo_url: str | None,
    ) -> CommandResult:
        if not principal.is_trusted:
            raise Forbidden("Providers are registered by staff.")
        actor = actor_of(principal)
        provider = Provider(
            id=provider_id or uuid4(),
            name=name,
            linkedin_organization_id=linkedin_organization_id,
            logo_url=logo_url,
            actor_id=actor.id,
            actor_role=actor.role,
        )
        return self._save_new(provider, "provider")

    def link_linkedin_page(self, principal: Principal, provider_id: UUID, organization_id: str) -> CommandResult:
        def command(provider: Provider) -> None:
            provider.link_linkedin_page(organization_id, actor_of(principal))

        return self._update(provider_id, Provider, command, visible=lambda p: may_manage_provider(principal, p.id))

    def register_product(
        self, principal: Principal, *, product_id: UUID | None, provider_id: UUID, title: str
    ) -> CommandResult:
        if not may_manage_provider(principal, provider_id):
            raise Forbidden("A product is registered by its provider or by staff.")
        self.get_provider(provider_id)
        actor = actor_of(principal)
        product = Product(
            id=product_id or uuid4(),
            provider_id=provider_id,
            title=title,
            actor_id=actor.id,
            actor_role=actor.role,
        )
        return self._save_new(product, "product")

    def define_certification(self, principal: Principal, product_id: UUID, name: str) -> CommandResult:
        def command(product: Product) -> None:
            product.define_certification(name, actor_of(principal))

        return self._update(
            product_id, Product, command, visible=lambda p: may_manage_provider(principal, p.provider_id)
        )

    def get_provider(self, provider_id: UUID) -> Provider:
        return self._get(provider_id, Provider, "provider")

    def get_product(self, product_id: UUID) -> Product:
        return self._get(product_id, Product, "product")

    # --- bookings ------------------------------------------------------------------------------

    def request_booking(
        self,
        principal: Principal,
        *,
        booking_id: UUID | None,
        product_id: UUID,
        participant: dict[str, str],
        employer_id: str | None,
    ) -> CommandResult:
        if not (principal.is_trusted or (principal.role is Role.PARTICIPANT and principal.sub == participant["id"])):
            raise Forbidden("A booking is requested by the participant themself, staff or a service.")
        product = self.get_product(product_id)
        actor = actor_of(principal)
        booking = Booking(
            id=booking_id or uuid4(),
            product_id=product.id,
            provider_id=product.provider_id,
            participant=participant,
            employer_id=employer_id,
            actor_id=actor.id,
            actor_role=actor.role,
        )
        return self._save_new(booking, "booking")

    def get_booking(self, principal: Principal, booking_id: UUID) -> Booking:
        booking = self._get(booking_id, Booking, "booking")
        if not can_see_booking(principal, booking):
            raise NotFound("No such booking.")
        return booking

    def accept(self, principal: Principal, booking_id: UUID) -> CommandResult:
        return self._provider_command(principal, booking_id, lambda b, a: b.accept(a))

    def decline(self, principal: Principal, booking_id: UUID, reason: str) -> CommandResult:
        return self._provider_command(principal, booking_id, lambda b, a: b.decline(reason, a))

    def change_status(
        self, principal: Principal, booking_id: UUID, status: Status, expected_version: int | None = None
    ) -> CommandResult:
        return self._provider_command(
            principal, booking_id, lambda b, a: b.change_status(status, a), expected_version=expected_version
        )

    def cancel(self, principal: Principal, booking_id: UUID, reason: str) -> CommandResult:
        def allowed(booking: Booking) -> bool:
            return principal.role is not Role.EMPLOYER

        return self._command(principal, booking_id, lambda b, a: b.cancel(reason, a), allowed, "cancel")

    def set_results_consent(self, principal: Principal, booking_id: UUID, *, given: bool) -> CommandResult:
        def command(booking: Booking, actor: Actor) -> None:
            if given:
                booking.give_results_consent(actor)
            else:
                booking.withdraw_results_consent(actor)

        return self._participant_command(principal, booking_id, command, "record consent")

    def submit_review(self, principal: Principal, booking_id: UUID, rating: int, text: str | None) -> CommandResult:
        return self._participant_command(principal, booking_id, lambda b, a: b.submit_review(rating, text, a), "review")

    def record_certificate_upload(
        self,
        principal: Principal,
        booking_id: UUID,
        certificate: CertificateFile,
        on_behalf_of: Actor,
        *,
        for_provider: UUID | None = None,
    ) -> CommandResult:
        """Called by the certificate service (service token) once the file is stored.

        `for_provider`: the uploader acts for this provider, so the booking must be theirs (404
        otherwise, as `check_certificate_upload` answers): then the record alone applies every
        rule of an upload, and a file already stored needs no check first.
        """
        if principal.role is not Role.SERVICE:
            raise Forbidden("Certificates are recorded by the certificate service.")

        def command(booking: Booking) -> None:
            product = self.get_product(booking.product_id)
            booking.upload_certificate(certificate, product.certification_name, datetime.now(UTC), on_behalf_of)

        return self._update(
            booking_id,
            Booking,
            command,
            visible=lambda b: for_provider is None or str(b.provider_id) == str(for_provider),
        )

    def check_certificate_upload(self, principal: Principal, booking_id: UUID, *, contains_results: bool) -> None:
        """Refuses an upload before the file is stored, with the same rules as the upload itself."""
        booking = self.get_booking(principal, booking_id)
        if not (principal.is_trusted or principal.role is Role.PROVIDER):
            raise Forbidden("Certificates are uploaded by the product's provider or staff.")
        product = self.get_product(booking.product_id)
        probe = CertificateFile(uuid4(), "0" * 64, 1, 1, "probe.pdf", contains_results)
        booking.upload_certificate(probe, product.certification_name, datetime.now(UTC), Actor("probe", "service"))

    def revoke_certificate(
        self, principal: Principal, booking_id: UUID, certificate_id: UUID, reason: str
    ) -> CommandResult:
        return self._provider_command(
            principal, booking_id, lambda b, a: b.revoke_certificate(certificate_id, reason, a)
        )

    def change_certificate_visibility(
        self, principal: Principal, booking_id: UUID, certificate_id: UUID, *, public: bool
    ) -> CommandResult:
        return self._participant_command(
            principal,
            booking_id,
            lambda b, a: b.change_certificate_visibility(certificate_id, public, a),
            "change visibility",
        )

    # --- plumbing ------------------------------------------------------------------------------

    def _provider_command(
        self,
        principal: Principal,
        booking_id: UUID,
        command: Callable[[Booking, Actor], None],
        *,
        expected_version: int | None = None,
    ) -> CommandResult:
        def allowed(booking: Booking) -> bool:
            return principal.is_trusted or principal.role is Role.PROVIDER

        return self._command(principal, booking_id, command, allowed, "do this", expected_version=expected_version)

    def _participant_command(
        self,
        principal: Principal,
        booking_id: UUID,
        command: Callable[[Booking, Actor], None],
        action: str,
    ) -> CommandResult:
        def allowed(booking: Booking) -> bool:
            return principal.role is Role.PARTICIPANT and principal.sub == booking.participant_id

        return self._command(principal, booking_id, command, allowed, action)

    def _command(
        self,
        principal: Principal,
        booking_id: UUID,
        command: Callable[[Booking, Actor], None],
        allowed: Callable[[Booking], bool],
        action: str,
        *,
        expected_version: int | None = None,
        on_behalf_of: Actor | None = None,
    ) -> CommandResult:
        actor = actor_of(principal, on_behalf_of)

        def run(booking: Booking) -> None:
            if not allowed(booking):
                raise Forbidden(f"You may not {action} on this booking.")
            command(booking, actor)

        return self._update(
            booking_id,
            Booking,
            run,
            visible=lambda b: can_see_booking(principal, b),
            expected_version=expected_version,
        )

    def _get(self, aggregate_id: UUID, cls: type[AggregateT], what: str) -> AggregateT:
        try:
            aggregate = self.repository.get(aggregate_id, projector_func=project_aggregate)
        except AggregateNotFoundError:
            raise NotFound(f"No such {what}.") from None
        if not isinstance(aggregate, cls):
            raise NotFound(f"No such {what}.")
        return aggregate

    def _save_new(self, aggregate: Any, what: str) -> CommandResult:
        try:
            recordings = self.save(aggregate)
        except IntegrityError:
            raise Conflict(f"A {what} with this id already exists.", code=f"{what}_exists") from None
        return CommandResult(aggregate, recordings[-1].notification.id)

    def _update(
        self,
        aggregate_id: UUID,
        cls: type[AggregateT],
        command: Callable[[AggregateT], None],
        *,
        visible: Callable[[AggregateT], bool],
        expected_version: int | None = None,
    ) -> CommandResult:
        """Load, check, run, save; on a concurrent write, retry from fresh state (no lost update)."""
        what = cls.__name__.lower()
        for _ in range(MAX_CONCURRENCY_RETRIES):
            aggregate = self._get(aggregate_id, cls, what)
            if not visible(aggregate):
                raise NotFound(f"No such {what}.")
            if expected_version is not None and aggregate.version != expected_version:
                raise PreconditionFailed(
                    f"The {what} changed since version {expected_version}; it is now at version "
                    f"{aggregate.version}. Reload it and try again.",
                    code="version_mismatch",
                )
            command(aggregate)
            try:
                recordings = self.save(aggregate)
            except IntegrityError:
                continue
            position = recordings[-1].notification.id if recordings else None
            return CommandResult(aggregate, position)
        raise Conflict(f"The {what} is being changed by others right now; try again.", code="concurrent_update")
