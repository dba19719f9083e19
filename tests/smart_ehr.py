"""A fake SMART on FHIR EHR for the tests (Flask, on loopback): SMART discovery, an authorization endpoint that
redirects back with a code, a token endpoint that checks the PKCE verifier (authlib's S256), and a FHIR endpoint
that passes reads on to the real test FHIR server (sekmet) for the tokens it issued."""

from __future__ import annotations

import secrets
import threading
from typing import Any
from urllib.parse import urlencode

import requests
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from flask import Flask, Response, jsonify, redirect, request
from werkzeug.serving import make_server

CLIENT_ID = "alp-cds-test"


class FakeEhr:
    def __init__(self, fhir_base: str, fhir_token: str, patient: str) -> None:
        self.fhir_base = fhir_base.rstrip("/")
        self.fhir_token = fhir_token
        self.patient = patient
        self.codes: dict[str, dict[str, Any]] = {}
        self.issued: set[str] = set()  # access tokens given out
        self.secrets: list[str] = []  # everything secret it handed out: access, refresh and id tokens
        self.hits: list[str] = []  # paths requested, in order
        self.authorize_params: dict[str, str] = {}
        self.verified = 0  # token requests whose PKCE verifier matched the challenge
        self.mode: dict[str, Any] = {}
        self.sent = 0  # bytes of a huge token answer handed to the socket
        self.app = self._build()
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.base = f"http://127.0.0.1:{self.server.server_port}"
        self.iss = f"{self.base}/fhir"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()

    def reset(self, **mode: Any) -> None:
        self.mode = mode
        self.hits.clear()
        self.authorize_params = {}

    def _huge(self, size: int) -> Any:
        """A token answer of ``size`` bytes, streamed (chunked); ``self.sent`` counts what the client took."""
        self.sent = 0
        chunk = b"a" * 65536
        yield b'{"token_type": "Bearer", "patient": "p", "access_token": "'
        while self.sent < size:
            self.sent += len(chunk)
            yield chunk
        yield b'"}'

    def _build(self) -> Flask:
        app = Flask("fake-ehr")

        @app.before_request
        def record() -> None:
            self.hits.append(request.path)

        @app.get("/fhir/.well-known/smart-configuration")
        def smart_configuration() -> Response:
            v1 = self.mode.get("v1")
            return jsonify(
                self.mode.get("config", {})
                | {
                    "issuer": self.iss,
                    "authorization_endpoint": f"{self.base}/auth/authorize",
                    "token_endpoint": f"{self.base}/auth/token",
                    "code_challenge_methods_supported": ["S256"],
                    "capabilities": ["launch-ehr", "client-public", "context-ehr-patient"]
                    + (["permission-v1"] if v1 else ["permission-v2"]),
                    "scopes_supported": ["launch", "openid", "fhirUser"]
                    + (["patient/Observation.read"] if v1 else ["patient/Observation.rs"]),
                }
                | self.mode.get("config", {})
            )

        @app.get("/auth/authorize")
        def authorize() -> Response:
            args = request.args.to_dict()
            self.authorize_params = args
            assert args["response_type"] == "code" and args["client_id"] == CLIENT_ID
            assert args["code_challenge_method"] == "S256" and len(args["code_challenge"]) == 43
            assert args["aud"] == self.iss and args["launch"] and args["state"]
            if self.mode.get("deny"):
                return redirect(
                    f"{args['redirect_uri']}?{urlencode({'error': 'access_denied', 'state': args['state']})}"
                )
            code = secrets.token_urlsafe(24)
            self.codes[code] = {"challenge": args["code_challenge"], "redirect_uri": args["redirect_uri"]}
            return redirect(f"{args['redirect_uri']}?{urlencode({'code': code, 'state': args['state']})}")

        @app.post("/auth/token")
        def token() -> tuple[Response, int]:
            form = request.form
            grant = self.codes.pop(form.get("code", ""), None)  # a code is used once
            if (
                grant is None
                or form.get("grant_type") != "authorization_code"
                or form.get("redirect_uri") != grant["redirect_uri"]
                or form.get("client_id") != CLIENT_ID
                or create_s256_code_challenge(form.get("code_verifier", "")) != grant["challenge"]
            ):
                return jsonify({"error": "invalid_grant", "error_description": "bad code or verifier"}), 400
            self.verified += 1
            if self.mode.get("token_error"):
                return jsonify({"error": "invalid_grant"}), 400
            if self.mode.get("huge_token_answer"):
                return Response(self._huge(self.mode["huge_token_answer"]), mimetype="application/json"), 200
            access, refresh, id_token = (
                f"ehr-access-{secrets.token_hex(16)}",
                f"ehr-refresh-{secrets.token_hex(16)}",
                f"eyJ.ehr-id-{secrets.token_hex(16)}.sig",
            )
            self.issued.add(access)
            self.secrets += [access, refresh, id_token]
            answer: dict[str, Any] = {
                "access_token": access,
                "token_type": "Bearer",
                "expires_in": 300,
                "scope": "launch openid fhirUser patient/*.rs",
                "refresh_token": refresh,
                "id_token": id_token,
                "patient": self.patient,
            }
            if self.mode.get("app_context"):
                answer["appContext"] = self.mode["app_context"]  # from the card link the clinician followed
            answer.update(self.mode.get("extra", {}))
            for key in self.mode.get("drop", ()):
                answer.pop(key)
            return jsonify(answer), 200

        @app.get("/steal")
        @app.get("/fhir-other/<path:rest>")
        def steal(rest: str = "") -> Response:
            return jsonify({"resourceType": "Bundle", "type": "searchset", "entry": []})

        @app.get("/fhir/<path:rest>")
        def fhir(rest: str) -> Response:
            bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
            if bearer not in self.issued:
                return jsonify({"resourceType": "OperationOutcome", "issue": []}), 401
            if self.mode.get("next_link") and rest == "Observation":  # a next link off the FHIR base
                bundle = {"resourceType": "Bundle", "type": "searchset", "entry": []}
                bundle["link"] = [{"relation": "next", "url": self.base + self.mode["next_link"]}]
                return jsonify(bundle)
            token = "not-the-servers-token" if self.mode.get("fhir_refuses") else self.fhir_token
            query = request.query_string.decode()
            answer = requests.get(
                f"{self.fhir_base}/{rest}" + (f"?{query}" if query else ""),
                headers={"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"},
                timeout=20,
            )
            body = answer.content.replace(self.fhir_base.encode(), self.iss.encode())  # next links point here
            return Response(body, status=answer.status_code, mimetype="application/fhir+json")

        return app
