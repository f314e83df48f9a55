"""deploy/k8s: every manifest is valid Kubernetes; what the kustomization renders obeys our rules.

Validation uses kubernetes-validate (schemas shipped in the package, strict: unknown fields fail).
The rules run on the output of `kubectl kustomize`, i.e. on what `kubectl apply -k` would send,
since the shared pod settings come from patches.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[3]
K8S_DIR = REPO_ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30.0"
SECRET_TEMPLATE = K8S_DIR / "secret.example.yaml"

API_PORTS = {"booking-api": 8001, "certificate-api": 8002, "notifier-api": 8003}
WORKERS = ("booking-worker", "certificate-worker", "notifier-worker")
SECRET_SETTINGS = {
    "DATABASE_URL",
    "AUTH_SECRET",
    "S3_ACCESS_KEY",
    "S3_SECRET_KEY",
    "VERIFY_SIGNING_KEYS",
    "SMTP_USERNAME",
    "SMTP_PASSWORD",
}


def _documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def _manifest_files() -> list[Path]:
    """Every manifest in deploy/k8s (patches/ holds partial objects, the kustomization is none)."""
    return sorted(path for path in K8S_DIR.glob("*.yaml") if path.name != "kustomization.yaml")


def _validation_error(document: dict) -> str | None:
    try:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        location = ".".join(str(part) for part in error.path)
        return f"{document['kind']}/{document['metadata']['name']} {location}: {error.message}"
    return None


@pytest.fixture(scope="module")
def kustomization() -> dict:
    return yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl (Debian package kubectl) is needed to render deploy/k8s")
    result = subprocess.run([kubectl, "kustomize", str(K8S_DIR)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _find(rendered: list[dict], kind: str, name: str) -> dict:
    matches = [doc for doc in rendered if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def _pod_owners(rendered: list[dict]) -> list[dict]:
    return [doc for doc in rendered if doc["kind"] in ("Deployment", "Job")]


def _container(owner: dict) -> dict:
    (container,) = owner["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("path", _manifest_files(), ids=lambda path: path.name)
def test_manifest_file_is_valid_on_its_own(path: Path) -> None:
    documents = _documents(path)
    assert documents, f"{path.name} holds no manifest"
    errors = [error for error in map(_validation_error, documents) if error]
    assert errors == []


def test_rendered_kustomization_is_valid(rendered: list[dict]) -> None:
    errors = [error for error in map(_validation_error, rendered) if error]
    assert errors == []


def test_kustomization_applies_every_manifest_except_the_secret_template(
    kustomization: dict,
) -> None:
    listed = set(kustomization["resources"])
    on_disk = {path.name for path in _manifest_files()}
    assert listed == on_disk - {SECRET_TEMPLATE.name}


def test_everything_lands_in_one_namespace(rendered: list[dict], kustomization: dict) -> None:
    namespace = kustomization["namespace"]
    _find(rendered, "Namespace", namespace)
    for document in rendered:
        if document["kind"] != "Namespace":
            assert document["metadata"]["namespace"] == namespace


@pytest.mark.parametrize("api", sorted(API_PORTS))
def test_api_deployment_has_two_replicas_and_probes_on_its_port(rendered: list[dict], api: str) -> None:
    deployment = _find(rendered, "Deployment", api)
    container = _container(deployment)
    assert deployment["spec"]["replicas"] == 2
    assert container["command"] == [api]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": API_PORTS[api]}
    readiness = container["readinessProbe"]["httpGet"]
    liveness = container["livenessProbe"]["httpGet"]
    assert (readiness["path"], readiness["port"]) == ("/readyz", "http")
    assert (liveness["path"], liveness["port"]) == ("/healthz", "http")


@pytest.mark.parametrize("worker", WORKERS)
def test_worker_deployment_is_one_replica_replaced_not_rolled(rendered: list[dict], worker: str) -> None:
    deployment = _find(rendered, "Deployment", worker)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert _container(deployment)["command"] == [worker]
    autoscaled = {doc["spec"]["scaleTargetRef"]["name"] for doc in rendered if doc["kind"] == "HorizontalPodAutoscaler"}
    assert worker not in autoscaled


def test_every_pod_runs_locked_down_with_limits(rendered: list[dict]) -> None:
    owners = _pod_owners(rendered)
    assert len(owners) == len(API_PORTS) + len(WORKERS) + 1
    for owner in owners:
        name = owner["metadata"]["name"]
        pod = owner["spec"]["template"]["spec"]
        container = _container(owner)
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] > 0, name
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
        for bound in ("requests", "limits"):
            assert set(container["resources"][bound]) >= {"cpu", "memory"}, f"{name} {bound}"
        scratch_volumes = {volume["name"] for volume in pod["volumes"] if "emptyDir" in volume}
        mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
        assert mounts.get("/tmp") in scratch_volumes, f"{name} has no writable /tmp"


def test_every_pod_reads_the_config_map_and_the_documented_secret(rendered: list[dict]) -> None:
    config_maps = {doc["metadata"]["name"] for doc in rendered if doc["kind"] == "ConfigMap"}
    (secret_template,) = _documents(SECRET_TEMPLATE)
    for owner in _pod_owners(rendered):
        sources = _container(owner)["envFrom"]
        config_refs = {src["configMapRef"]["name"] for src in sources if "configMapRef" in src}
        secret_refs = {src["secretRef"]["name"] for src in sources if "secretRef" in src}
        assert config_refs and config_refs <= config_maps, owner["metadata"]["name"]
        assert secret_refs == {secret_template["metadata"]["name"]}, owner["metadata"]["name"]


def test_config_map_holds_no_secret_and_keeps_projections_out_of_the_apis(
    rendered: list[dict],
) -> None:
    (config_map,) = [doc for doc in rendered if doc["kind"] == "ConfigMap"]
    assert SECRET_SETTINGS.isdisjoint(config_map["data"])
    assert config_map["data"]["RUN_WORKERS"] == "false"


def test_the_secret_is_never_applied_from_the_repository(rendered: list[dict]) -> None:
    assert [doc for doc in rendered if doc["kind"] == "Secret"] == []


def test_schema_job_runs_the_migration_once(rendered: list[dict]) -> None:
    jobs = [doc for doc in rendered if doc["kind"] == "Job"]
    assert len(jobs) == 1
    assert _container(jobs[0])["command"] == ["projections", "migrate"]
    assert jobs[0]["spec"]["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")


@pytest.mark.parametrize("api", sorted(API_PORTS))
def test_api_is_reachable_autoscaled_and_protected_from_disruption(rendered: list[dict], api: str) -> None:
    pod_labels = _find(rendered, "Deployment", api)["spec"]["template"]["metadata"]["labels"]

    service = _find(rendered, "Service", api)
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert (port["port"], port["targetPort"]) == (API_PORTS[api], "http")

    autoscaler = _find(rendered, "HorizontalPodAutoscaler", api)
    assert autoscaler["apiVersion"] == "autoscaling/v2"
    assert autoscaler["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": api,
    }
    assert 2 <= autoscaler["spec"]["minReplicas"] <= autoscaler["spec"]["maxReplicas"]

    budget = _find(rendered, "PodDisruptionBudget", api)
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert budget["spec"]["minAvailable"] >= 1
