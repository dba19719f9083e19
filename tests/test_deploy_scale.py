"""Deploying at scale: the Kubernetes manifests (deploy/k8s), checked offline against the Kubernetes API schemas of
kubernetes-validate, and the compose stack's Redis and migration job (its file is validated by test_deploy_files).

Always: every resource file of the base (and the example Secret) strictly (no unknown field, every required one),
and every patch of the production overlay for the fields it sets (strictly, without the required-field check: a
patch holds only what it changes, kustomize merges it onto the base). Where ``kubectl`` is installed (it ships
kustomize): the base and the overlay rendered by ``kubectl kustomize``, every resource strictly. Nothing here
applies the patches by hand.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from service.settings import load_settings, setting_names
from tests.conftest import ROOT

K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
PRODUCTION = K8S / "overlays" / "production"
KUBERNETES_VERSION = "1.30.0"  # the oldest release the manifests are meant for (autoscaling/v2, policy/v1)


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kustomization(directory: Path) -> dict:
    return yaml.safe_load((directory / "kustomization.yaml").read_text())


def validate(resource: dict) -> None:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{resource['kind']}/{resource['metadata']['name']}: {exc.message} at {list(exc.path)}")


def validate_patch(patch: dict) -> None:
    """A strategic-merge patch against its kind's strict schema, the required-field check left out."""
    import re

    from kubernetes_validate import utils

    api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", patch["apiVersion"])
    version = [v for v in utils.all_versions() if utils.major_minor(v) <= utils.major_minor(KUBERNETES_VERSION)][-1]
    folder = f"kubernetes-json-schema/v{version}-local-strict"
    schema = utils.schema_contents(f"{folder}/{patch['kind'].lower()}-{api}.json", KUBERNETES_VERSION)
    definitions = utils.schema_contents(f"{folder}/_definitions.json", KUBERNETES_VERSION)
    from referencing import Registry, Resource

    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    lenient = jsonschema.validators.extend(
        jsonschema.Draft202012Validator,
        {"required": lambda *_: iter(())},
    )
    errors = [
        f"{'/'.join(map(str, e.path))}: {e.message}" for e in lenient(schema, registry=registry).iter_errors(patch)
    ]
    assert errors == [], f"{patch['kind']} patch: {errors}"


def base_resources() -> list[dict]:
    return [doc for name in kustomization(BASE)["resources"] for doc in documents(BASE / name)]


def test_every_base_manifest_and_the_example_secret_is_valid():
    resources = base_resources() + documents(K8S / "secret.example.yaml")
    assert {r["kind"] for r in resources} >= {
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "ServiceAccount",
        "Secret",
    }
    for resource in resources:
        validate(resource)


def test_every_overlay_patch_and_resource_is_valid():
    overlay = kustomization(PRODUCTION)
    patches = [documents(PRODUCTION / p["path"])[0] for p in overlay["patches"]]
    base_kinds = {(r["kind"], r["metadata"]["name"]) for r in base_resources()}
    for patch in patches:
        assert (patch["kind"], patch["metadata"]["name"]) in base_kinds  # it patches something that exists
        validate_patch(patch)
    for name in overlay["resources"]:
        if (PRODUCTION / name).is_file():
            for resource in documents(PRODUCTION / name):
                validate(resource)


def test_a_patch_with_a_misspelt_field_is_caught():
    with pytest.raises(AssertionError, match="replicaz"):
        validate_patch(
            {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}, "spec": {"replicaz": 3}}
        )


def test_the_trust_files_are_valid_trust_settings():
    for path in (BASE / "trusted-issuers.yaml", PRODUCTION / "trusted-issuers.yaml"):
        load_settings({"TRUSTED_ISSUERS": str(path)}, environ={})


def test_the_deployment_runs_as_the_issue_asks():
    deployment = next(r for r in base_resources() if r["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz/hooks"  # no store: see test_feedback_and_ops
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 10001
    assert pod["enableServiceLinks"] is False  # no CDS_REDIS_PORT... from a Service named cds-redis
    for each in [container, *pod["initContainers"]]:
        assert each["securityContext"]["readOnlyRootFilesystem"] is True
        assert each["securityContext"]["allowPrivilegeEscalation"] is False
        assert each["resources"]["requests"] and each["resources"]["limits"]
    # bench/memory.py: 318-382 MiB after bursts of large charts, 453 MiB peak with the large-call bulkhead
    assert container["resources"]["requests"]["memory"] == "384Mi"
    assert container["resources"]["limits"]["memory"] == "768Mi"
    liveness = container["livenessProbe"]
    assert liveness["timeoutSeconds"] * liveness["failureThreshold"] >= 30  # a busy pod is not restarted at once
    env = {e["name"]: e for e in container["env"]}
    assert {"CDS_LARGE_CALLS_PER_WORKER", "CDS_FHIR_CALLS_PER_WORKER"}.isdisjoint(env)  # the measured defaults
    for name, key in (("CDS_FEEDBACK_DB_URL", "feedback-db-url"), ("CDS_REDIS_URL", "redis-url")):
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "alp-cds-secrets", "key": key}
    assert env["CDS_FEEDBACK_DB_MIGRATE"]["value"] == "off" and env["CDS_REPLAY_FAIL_OPEN"]["value"] == "off"
    # The override memory's key: from the Secret, the same for every pod; an install without it starts (memory off).
    key = env["CDS_OVERRIDE_KEY"]["valueFrom"]["secretKeyRef"]
    assert key == {"name": "alp-cds-secrets", "key": "override-key", "optional": True}
    assert pod["initContainers"][0]["command"] == ["alp-cds", "migrate"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts[env["PROMETHEUS_MULTIPROC_DIR"]["value"]]]
    assert volumes[mounts["/etc/alp-cds"]]["configMap"]["name"] == "alp-cds-trust"
    assert env["CDS_TRUSTED_ISSUERS_FILE"]["value"].startswith("/etc/alp-cds/")
    assert "emptyDir" in volumes[mounts["/tmp"]]
    settings = {name.removeprefix("CDS_") for name in env if name.startswith("CDS_")}
    assert settings <= set(setting_names()) | {"TRUSTED_ISSUERS_FILE"}  # no misspelt setting


def test_the_autoscaler_alone_sets_the_number_of_pods():
    """A Deployment's replicas would reset the HPA's count on every kubectl apply: neither the base nor a patch
    sets it."""
    deployment = next(r for r in base_resources() if r["kind"] == "Deployment")
    assert "replicas" not in deployment["spec"]
    for patch in kustomization(PRODUCTION)["patches"]:
        doc = documents(PRODUCTION / patch["path"])[0]
        assert doc["kind"] != "Deployment" or "replicas" not in doc["spec"]
    assert any(r["kind"] == "HorizontalPodAutoscaler" for r in base_resources())


def test_a_pod_stops_after_the_balancers_let_go_of_it_and_its_requests_finish():
    from service import gunicorn_conf

    pod = next(r for r in base_resources() if r["kind"] == "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "/bin/sleep"  # in python:3.11.x-slim-bookworm (the Dockerfile's base)
    assert re.search(r"^FROM python:3\.11\.\d+-slim-bookworm@", (ROOT / "Dockerfile").read_text(), re.M)
    assert pod["terminationGracePeriodSeconds"] > int(command[1]) + gunicorn_conf.graceful_timeout


def test_the_network_policy_lets_out_only_dns_postgresql_redis_and_https():
    for directory, policy in (
        (BASE, next(r for r in base_resources() if r["kind"] == "NetworkPolicy")),
        (PRODUCTION, documents(PRODUCTION / "networkpolicy-patch.yaml")[0]),
    ):
        ports = sorted({(p["protocol"], p["port"]) for rule in policy["spec"]["egress"] for p in rule["ports"]})
        assert {("TCP", 443), ("UDP", 53), ("TCP", 5432)} <= set(ports), directory
        assert {p for _, p in ports} <= {53, 443, 5432, 6379, 6380}, directory
        assert all(rule.get("to") for rule in policy["spec"]["egress"])  # no rule open to everywhere
        dns = [rule for rule in policy["spec"]["egress"] if {p["port"] for p in rule["ports"]} == {53}]
        assert {"cidr": "169.254.20.10/32"} in [peer.get("ipBlock") for rule in dns for peer in rule["to"]]


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.skip("kubectl is not installed: the kustomize rendering was not checked (the files were)")
    return found


@pytest.mark.parametrize("directory", [BASE, PRODUCTION], ids=["base", "production"])
def test_the_rendered_kustomization_is_valid(directory):
    rendered = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert rendered.returncode == 0, rendered.stderr
    resources = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
    for resource in resources:
        validate(resource)
    kinds = {r["kind"]: r for r in resources}
    assert {
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "ConfigMap",
    } <= set(kinds)
    volume = next(v for v in kinds["Deployment"]["spec"]["template"]["spec"]["volumes"] if v["name"] == "trust")
    assert volume["configMap"]["name"] == kinds["ConfigMap"]["metadata"]["name"]  # the generated name, hash and all
    if directory == PRODUCTION:
        assert {r["metadata"].get("namespace") for r in resources if r["kind"] != "Namespace"} == {"alp-cds"}
        assert kinds["HorizontalPodAutoscaler"]["spec"]["minReplicas"] == 3
        assert kinds["PodDisruptionBudget"]["spec"]["minAvailable"] == 2
        assert "fhir.hospital-a.example" in kinds["ConfigMap"]["data"]["trusted-issuers.yaml"]
        image = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]["image"]
        assert image == "registry.example.org/alp-cds:0.1.0"


def test_the_compose_stack_shares_redis_and_postgresql_and_migrates_first():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert services["migrate"]["command"] == ["alp-cds", "migrate"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    service = services["alp-cds"]
    assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    env = service["environment"]
    assert env["CDS_REDIS_URL"].startswith("redis://redis:") and env["CDS_FEEDBACK_DB_URL"].startswith("postgresql://")
    assert env["CDS_FEEDBACK_DB_URL"] == services["migrate"]["environment"]["CDS_FEEDBACK_DB_URL"]
    assert env["CDS_FEEDBACK_DB_MIGRATE"] == "off" and env["PROMETHEUS_MULTIPROC_DIR"]
    assert services["redis"]["image"].startswith("redis:") and services["postgres"]["image"].startswith("postgres:")
    redis = services["redis"]["command"]
    assert redis[redis.index("--maxmemory-policy") + 1] == "noeviction"  # an evicted jti is a replay accepted
    assert redis[redis.index("--appendonly") + 1] == "yes"  # a restart forgets no jti
