"""The deploy files speak the project's contract: real settings names and real console scripts only.

A misspelt variable in compose.yaml or the ConfigMap is silently ignored by the services and falls
back to a default (SQLite, a local folder, .eml files), so it is caught here instead. The known
names are those fixed in the project brief plus every field of the settings classes in the code.
"""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import dockerfile
import yaml

from shared.settings import ServiceSettings

REPO_ROOT = Path(__file__).resolve().parents[3]
DEPLOY_DIR = REPO_ROOT / "deploy"

# The settings names fixed in the project brief.
BRIEF_SETTINGS = {
    "DATA_DIR",
    "DATABASE_URL",
    "AUTH_SECRET",
    "AUTH_PUBLIC_KEY",
    "AUTH_JWKS_URL",
    "BOOKING_URL",
    "CERTIFICATE_URL",
    "NOTIFIER_URL",
    "S3_ENDPOINT",
    "S3_ACCESS_KEY",
    "S3_SECRET_KEY",
    "S3_BUCKET",
    "S3_SECURE",
    "S3_REGION",
    "MAX_UPLOAD_BYTES",
    "VERIFY_SIGNING_KEYS",
    "SMTP_HOST",
    "SMTP_PORT",
    "SMTP_TLS",
    "SMTP_USERNAME",
    "SMTP_PASSWORD",
    "MAIL_FROM",
    "RUN_WORKERS",
    "LOG_LEVEL",
    "LOG_FORMAT",
}
# Read by the container healthcheck, not by the application.
CONTAINER_ONLY = {"HEALTHCHECK_URL"}
LONG_RUNNING = {
    "booking-api",
    "certificate-api",
    "notifier-api",
    "booking-worker",
    "certificate-worker",
    "notifier-worker",
}


def _subclasses(cls: type) -> set[type]:
    return {sub for direct in cls.__subclasses__() for sub in {direct, *_subclasses(direct)}}


def _known_settings() -> set[str]:
    """Brief names plus the fields of ServiceSettings and of each services/*/settings.py class."""
    for module in sorted((REPO_ROOT / "services").glob("*/settings.py")):
        importlib.import_module(f"services.{module.parent.name}.settings")
    classes = {ServiceSettings, *_subclasses(ServiceSettings)}
    # env_prefix is empty and names are case-insensitive: field `s3_bucket` is S3_BUCKET.
    return BRIEF_SETTINGS | {field.upper() for cls in classes for field in cls.model_fields}


def _console_scripts() -> set[str]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return set(project["project"]["scripts"])


def _app_services() -> dict[str, dict]:
    compose = yaml.safe_load((DEPLOY_DIR / "compose.yaml").read_text(encoding="utf-8"))
    return {
        name: service
        for name, service in compose["services"].items()
        if service["image"].startswith("booking-followup:")
    }


def _k8s_documents() -> list[dict]:
    return [
        document
        for path in sorted((DEPLOY_DIR / "k8s").glob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8"))
        if document
    ]


def _k8s_commands() -> dict[str, list[str]]:
    return {
        document["metadata"]["name"]: container["command"]
        for document in _k8s_documents()
        if document["kind"] in ("Deployment", "Job")
        for container in document["spec"]["template"]["spec"]["containers"]
    }


def test_compose_passes_only_known_settings_to_the_services() -> None:
    for name, service in _app_services().items():
        unknown = set(service["environment"]) - _known_settings() - CONTAINER_ONLY
        assert unknown == set(), f"{name}: {sorted(unknown)}"


def test_k8s_config_map_and_secret_template_use_only_known_settings() -> None:
    for document in _k8s_documents():
        if document["kind"] == "ConfigMap":
            assert set(document["data"]) <= _known_settings(), document["metadata"]["name"]
        if document["kind"] == "Secret":
            assert set(document["stringData"]) <= _known_settings(), document["metadata"]["name"]


def test_compose_runs_only_console_scripts_and_every_long_running_one() -> None:
    commands = [service["command"][0] for service in _app_services().values()]
    assert set(commands) <= _console_scripts()
    assert set(commands) >= LONG_RUNNING


def test_k8s_runs_only_console_scripts_and_every_long_running_one() -> None:
    commands = {command[0] for command in _k8s_commands().values()}
    assert commands <= _console_scripts()
    assert commands >= LONG_RUNNING


def test_image_default_command_is_a_console_script_and_its_settings_are_real() -> None:
    instructions = dockerfile.parse_file(str(DEPLOY_DIR / "Dockerfile"))
    (cmd,) = [instruction for instruction in instructions if instruction.cmd == "CMD"]
    assert cmd.value[0] in _console_scripts()
    final_stage_start = max(i.start_line for i in instructions if i.cmd == "FROM")
    app_settings = {"HOST", "DATA_DIR"}
    assert app_settings <= _known_settings()
    image_env = {
        key
        for instruction in instructions
        if instruction.cmd == "ENV" and instruction.start_line > final_stage_start
        for key in instruction.value[::2]
    }
    assert app_settings <= image_env
