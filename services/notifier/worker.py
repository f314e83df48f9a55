"""`notifier-worker`: the notifier in the foreground, for production (the APIs run with RUN_WORKERS=false).

Runs the notification log projection, the process (booking events → notifications) and the sender
until SIGTERM or SIGINT; then it finishes the mail in flight, records it, and exits.
`notifier-worker retry-dead ...` requeues dead letters (see services/notifier/retry_dead.py).
"""

from __future__ import annotations

import argparse

import structlog

from services.notifier import retry_dead
from services.notifier.delivery import NotifierWorker
from services.notifier.projections import NOTIFICATION_LOG
from services.notifier.settings import NotifierSettings
from shared.http import configure_logging
from shared.settings import load_settings
from shared.worker import run_workers

log = structlog.get_logger(__name__)


def run(settings: NotifierSettings) -> None:
    worker = NotifierWorker(settings)
    log.info("notifier worker started", mailer=repr(worker.mailer))
    run_workers(settings, [NOTIFICATION_LOG], extra=[(worker.run_until_stopped, worker.request_stop)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="notifier-worker", description="Schedules and sends the reminders.")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("run", help="run the notifier until SIGTERM (the default)")
    retry_dead.add_arguments(commands.add_parser("retry-dead", help="list or requeue dead letters"))
    args = parser.parse_args(argv)
    settings = load_settings(NotifierSettings)
    assert isinstance(settings, NotifierSettings)
    configure_logging(settings.log_level, settings.log_format)
    if args.command == "retry-dead":
        raise SystemExit(retry_dead.run(settings, args))
    run(settings)


if __name__ == "__main__":
    main()
