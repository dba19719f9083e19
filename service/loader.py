"""Developer commands: load the fixture Bundles into a FHIR server, and call a running service for a loaded patient."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import requests

from service.hook_requests import fhir_authorization, hook_request

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


class ToolError(Exception):
    """A failure to explain to the user in one line (no traceback)."""


def fixtures_dir(given: str | None = None) -> Path:
    candidates = [Path(given)] if given else [Path.cwd() / "fixtures" / "fhir", PACKAGE_ROOT / "fixtures" / "fhir"]
    for candidate in candidates:
        if candidate.is_dir() and any(candidate.glob("*.json")):
            return candidate
    raise ToolError(f"no fixture Bundles found in {', '.join(str(c) for c in candidates)}")


def _session(token: str | None) -> requests.Session:
    session = requests.Session()
    session.headers.update({"Accept": "application/fhir+json", "Content-Type": "application/fhir+json"})
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    return session


def wait_for_server(fhir_base: str, seconds: float, token: str | None = None) -> None:
    """Poll ``{fhir_base}/metadata`` until it answers 200 or the time is up."""
    deadline = time.monotonic() + seconds
    session = _session(token)
    while True:
        try:
            if session.get(f"{fhir_base.rstrip('/')}/metadata", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() >= deadline:
            raise ToolError(f"FHIR server at {fhir_base} did not answer /metadata within {seconds:.0f} s")
        time.sleep(1)


def _diagnostics(response: requests.Response) -> str:
    try:
        body = response.json()
        issues = body.get("issue") or []
        text = "; ".join(str(i.get("diagnostics") or i.get("details", {}).get("text") or i.get("code")) for i in issues)
        return text or response.text[:300]
    except ValueError:
        return response.text[:300]


def load_fixtures(fhir_base: str, token: str | None = None, directory: str | None = None) -> dict[str, Counter]:
    """POST every transaction Bundle (PUT entries with fixed ids: loading twice changes nothing).

    Returns, per file, how many resources of each type were loaded.
    """
    base = fhir_base.rstrip("/")
    session = _session(token)
    report: dict[str, Counter] = {}
    for path in sorted(fixtures_dir(directory).glob("*.json")):
        bundle = json.loads(path.read_text(encoding="utf-8"))
        try:
            response = session.post(base, data=json.dumps(bundle), timeout=60)
        except requests.RequestException as exc:
            raise ToolError(f"cannot reach the FHIR server at {base}: {type(exc).__name__}") from None
        if response.status_code not in (200, 201):
            raise ToolError(f"{base} rejected {path.name}: HTTP {response.status_code}: {_diagnostics(response)}")
        report[path.name] = Counter(e["resource"]["resourceType"] for e in bundle.get("entry", []))
    return report


TEST_ISSUER = "urn:alp-cds:test-cli"  # deploy/sandbox-issuers.yaml trusts it with deploy/test-cli-key.pem
TOKEN_SECONDS = 300  # CDS Hooks: a token's lifetime should be at most 5 minutes


def _jwk_thumbprint(public: dict[str, Any]) -> str:
    """RFC 7638: the SHA-256 of the key's required members, in order, as compact JSON (base64url)."""
    import base64
    import hashlib

    required = ("crv", "kty", "x", "y") if public["kty"] == "EC" else ("e", "kty", "n")
    canonical = json.dumps({k: public[k] for k in required}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def signed_token(key_file: str, issuer: str, audience: str, kid: str | None = None) -> str:
    """A CDS Hooks 2.0 client JWT for ``audience`` (the service URL called), signed with the PEM private key in
    ``key_file``: ES384 for an EC P-384 key, RS384 for an RSA one; ``kid`` by default the key's RFC 7638
    thumbprint (what the trust file's inline JWK must carry)."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from jwt.algorithms import ECAlgorithm, RSAAlgorithm

    try:
        key = load_pem_private_key(Path(key_file).read_bytes(), password=None)
    except OSError as exc:
        raise ToolError(f"cannot read the signing key {key_file}: {exc.strerror}") from None
    except (ValueError, TypeError):
        raise ToolError(f"{key_file} is not an unencrypted PEM private key") from None
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP384R1):
        algorithm, public = "ES384", json.loads(ECAlgorithm.to_jwk(key.public_key()))
    elif isinstance(key, rsa.RSAPrivateKey):
        algorithm, public = "RS384", json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    else:
        raise ToolError(f"{key_file}: the service accepts ES384 (an EC P-384 key) or RS384 (an RSA key) only")
    now = int(time.time())
    claims = {"iss": issuer, "aud": audience, "iat": now, "exp": now + TOKEN_SECONDS, "jti": str(uuid.uuid4())}
    return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": kid or _jwk_thumbprint(public)})


def call_service(
    service_url: str,
    service_id: str,
    patient_id: str,
    fhir_base: str,
    token: str | None = None,
    draft_orders: dict[str, Any] | None = None,
    selections: list[str] | None = None,
    sign_key: str | None = None,
    issuer: str = TEST_ISSUER,
    kid: str | None = None,
    public_url: str | None = None,
) -> list[dict[str, Any]]:
    """Send a hook request without prefetch, so the service fetches the patient's data from the FHIR server. With
    ``sign_key``, the call carries a JWT signed with it (a service with JWT checks on needs one), for the audience
    ``public_url`` + the path (the service's CDS_PUBLIC_BASE_URL; by default ``service_url``: the two differ when the
    service is reached at another address than the one its clients use, e.g. from inside docker compose)."""
    body = hook_request(
        service_id,
        {},
        patient_id,
        draft_orders=draft_orders,
        selections=selections,
        with_prefetch=False,
        fhir_server=fhir_base.rstrip("/"),
    )
    body["hookInstance"] = str(uuid.uuid4())
    if token:
        body["fhirAuthorization"] = fhir_authorization(token)
    path = f"/cds-services/{service_id}"
    url = service_url.rstrip("/") + path
    audience = (public_url or service_url).rstrip("/") + path
    headers = {"Authorization": f"Bearer {signed_token(sign_key, issuer, audience, kid)}"} if sign_key else {}
    try:
        response = requests.post(url, json=body, headers=headers, timeout=60)
    except requests.RequestException as exc:
        raise ToolError(f"cannot reach the service at {service_url}: {type(exc).__name__}") from None
    if response.status_code == 401:
        hint = (
            "the token was refused: the service's auth_failed log line says why (the issuer, the key, or the audience: "
            "--public-url must be the service's CDS_PUBLIC_BASE_URL)"
            if sign_key
            else "JWT checks are on: sign the call with --sign-key (README, 'Try it with HAPI FHIR and the CDS Hooks "
            "Sandbox')"
        )
        raise ToolError(f"the service answered HTTP 401: {hint}")
    if response.status_code != 200:
        raise ToolError(f"the service answered HTTP {response.status_code}: {_diagnostics(response)}")
    return response.json()["cards"]


def format_cards(cards: list[dict[str, Any]]) -> str:
    if not cards:
        return "No cards."
    lines: list[str] = []
    for number, card in enumerate(cards, 1):
        lines.append(f"[{number}] {card['indicator'].upper()}: {card['summary']}")
        lines.append(f"    source: {card['source']['label']}")
        for suggestion in card.get("suggestions", []):
            mark = "*" if suggestion.get("isRecommended") else "-"
            lines.append(f"    {mark} {suggestion['label']}")
        for reason in card.get("overrideReasons", []):
            lines.append(f"    override: {reason['display']}")
        lines.append("")
    return "\n".join(lines).rstrip()
