"""Dead letters from the command line (also `notifier-worker retry-dead`).

python -m services.notifier.retry_dead               list the dead letters
python -m services.notifier.retry_dead ID [ID ...]   requeue these (due now)
python -m services.notifier.retry_dead --all         requeue every dead letter
"""

from __future__ import annotations

import argparse
import getpass
import sys
from uuid import UUID

from services.notifier.application import NotifierProcess
from services.notifier.projections import NOTIFICATION_LOG
from services.notifier.settings import NotifierSettings
from shared.auth import Role
from shared.errors import AppError
from shared.eventstore import eventsourcing_env
from shared.feed import open_view
from shared.settings import load_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("notification_ids", nargs="*", type=UUID, metavar="ID", help="dead letters to requeue")
    parser.add_argument("--all", action="store_true", help="requeue every dead letter")


def run(settings: NotifierSettings, args: argparse.Namespace) -> int:
    log_view = open_view(settings, NOTIFICATION_LOG)
    process = NotifierProcess(env=eventsourcing_env(settings, NotifierProcess.name))
    try:
        if not (args.notification_ids or args.all):
            for row in (log_view.get(dead_id) for dead_id in log_view.dead_letters()):
                if row is not None:
                    print(f"{row['notification_id']}  {row['kind']}  booking {row['booking_id']}  {row['last_error']}")
            return 0
        targets = args.notification_ids or log_view.dead_letters()
        return _requeue(process, targets)
    finally:
        log_view.datastore.close()
        process.close()


def _operator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a name
        return "unknown"


def _requeue(process: NotifierProcess, notification_ids: list[UUID]) -> int:
    actor_id = f"cli:{_operator()}"
    failed = 0
    for notification_id in notification_ids:
        try:
            process.requeue_dead_letter(notification_id, actor_id=actor_id, actor_role=Role.STAFF.value)
        except AppError as error:
            failed += 1
            print(f"{notification_id}: {error.message}", file=sys.stderr)
        else:
            print(f"{notification_id}: requeued")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.notifier.retry_dead", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    settings = load_settings(NotifierSettings)
    assert isinstance(settings, NotifierSettings)
    raise SystemExit(run(settings, args))


if __name__ == "__main__":
    main()
