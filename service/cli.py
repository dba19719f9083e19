"""The ``alp-cds`` command: serve the service, load fixtures into a FHIR server, call a running service."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="alp-cds", description="Low-ALP CDS Hooks service")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run under gunicorn (production)")
    serve.add_argument("--bind", default="127.0.0.1:8080")
    serve.add_argument("--workers", type=int, default=2)
    from service.gunicorn_conf import threads as default_threads

    serve.add_argument("--threads", type=int, help=f"requests each worker serves at once (default {default_threads})")
    serve.add_argument(
        "--public-url",
        help="the URL clients call, which a JWT's aud must match (default: CDS_PUBLIC_BASE_URL, else http://BIND "
        "when BIND names a specific address)",
    )
    dev = sub.add_parser("dev", help="run Flask's development server (reloads on change)")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8080)

    load = sub.add_parser("load-fixtures", help="load fixtures/fhir/*.json into a FHIR R4 server (idempotent)")
    load.add_argument("--fhir-base", required=True, help="e.g. http://localhost:8090/fhir")
    load.add_argument("--token", help="bearer token for the FHIR server")
    load.add_argument("--dir", help="folder of transaction Bundles (default: fixtures/fhir)")
    load.add_argument("--wait", type=float, default=0, help="seconds to wait for the server's /metadata first")

    call = sub.add_parser("call", help="call a running service for a loaded patient, without prefetch")
    call.add_argument("service_id", help="low-alp-workup or antiresorptive-low-alp")
    call.add_argument("--patient", required=True)
    call.add_argument("--fhir-base", required=True)
    call.add_argument("--service-url", default="http://localhost:8080", help="where to send the call")
    call.add_argument(
        "--public-url",
        help="with --sign-key: the service's CDS_PUBLIC_BASE_URL, the token's audience (default: --service-url)",
    )
    call.add_argument("--token", help="access token passed to the service as fhirAuthorization")
    call.add_argument(
        "--sign-key",
        help="sign the call (a service with JWT checks on needs it) with this PEM private key (EC P-384 or RSA); "
        "deploy/test-cli-key.pem is the test client deploy/sandbox-issuers.yaml trusts",
    )
    call.add_argument("--issuer", help="the signed token's iss (default: urn:alp-cds:test-cli, the test client)")
    call.add_argument("--kid", help="the signed token's kid (default: the key's RFC 7638 thumbprint)")
    call.add_argument(
        "--draft-orders",
        help="order-select and order-sign: a JSON file, a Bundle of draft orders or a hook request whose "
        "context.draftOrders to send (e.g. fixtures/requests/order-low-alp-in.json)",
    )
    call.add_argument("--select", action="append", default=[], help="order-select: e.g. MedicationRequest/abc")
    call.add_argument("--json", action="store_true", help="print the raw JSON response")
    report = sub.add_parser(
        "feedback-report", help="feedback per card kind: issued, cards with feedback, last outcomes and why, events"
    )
    report.add_argument("--db", help="feedback store URL (default: CDS_FEEDBACK_DB_URL)")
    report.add_argument(
        "--html",
        metavar="FILE",
        help="write the CDS committee's report to FILE instead: one self-contained HTML page, per card kind and hook "
        "by month (issued, accepted and which suggestion, overridden and why, ignored, acceptance rate, the "
        "overrides that now quiet a card)",
    )
    migrate = sub.add_parser(
        "migrate", help="bring the feedback store's schema to this release's version (Alembic; idempotent)"
    )
    migrate.add_argument("--db", help="feedback store URL (default: CDS_FEEDBACK_DB_URL)")
    migrate.add_argument(
        "--check", action="store_true", help="only say whether it is current (exit 1 if not); creates nothing"
    )
    migrate.add_argument("--timeout", type=float, help="seconds for the migration (default: CDS_MIGRATE_TIMEOUT, 600)")
    args = parser.parse_args(argv)

    if args.command == "dev":
        from service.app import create_app

        create_app().run(host=args.host, port=args.port, debug=False, use_reloader=True)
        return 0
    if args.command == "serve":
        from gunicorn.app.wsgiapp import run

        from service.settings import SettingsError, check_startup, load_settings

        public_url = args.public_url or os.environ.get("CDS_PUBLIC_BASE_URL") or url_of_bind(args.bind)
        if public_url:
            os.environ["CDS_PUBLIC_BASE_URL"] = public_url
        try:  # here, with a clear message, rather than in every worker
            check_startup(load_settings())
        except SettingsError as exc:
            print(f"alp-cds serve: {exc}", file=sys.stderr)
            return 2

        # A TCP address gets a listening socket per worker (SO_REUSEPORT): the kernel then spreads connections
        # evenly over the workers, where one shared socket lets one worker take most of them, and slow clients
        # starve that worker while the other idles. gunicorn would retry a taken address for ever then: check first.
        tcp = not args.bind.startswith(("unix:", "fd://"))
        if tcp and address_in_use(args.bind):
            print(f"alp-cds serve: {args.bind} is in use by another program", file=sys.stderr)
            return 2
        sys.argv = gunicorn_argv(args.bind, args.workers, args.threads)
        run()
        return 0

    if args.command == "migrate":
        return run_migrate(args.db, args.check, args.timeout)

    if args.command == "feedback-report":
        from service.feedback import FeedbackStore
        from service.settings import load_settings

        settings = load_settings()
        from service.card_render import override_reason_displays

        store = FeedbackStore(
            args.db or settings.FEEDBACK_DB_URL, settings.FEEDBACK_DB_TIMEOUT, settings.FEEDBACK_DB_MIGRATE
        )
        if args.html:
            return write_committee_report(store, settings, Path(args.html))
        print(json.dumps(store.report(override_reason_displays()), indent=2))
        return 0

    from service import loader

    try:
        if args.command == "load-fixtures":
            if args.wait:
                loader.wait_for_server(args.fhir_base, args.wait, args.token)
            report = loader.load_fixtures(args.fhir_base, args.token, args.dir)
            total = sum(sum(c.values()) for c in report.values())
            for name, counts in report.items():
                print(f"{name}: " + ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())))
            print(f"Loaded {len(report)} bundles ({total} resources) into {args.fhir_base}")
            return 0
        draft_orders = read_draft_orders(args.draft_orders) if args.draft_orders else None
        cards = loader.call_service(
            args.service_url,
            args.service_id,
            args.patient,
            args.fhir_base,
            args.token,
            draft_orders,
            args.select,
            sign_key=args.sign_key,
            issuer=args.issuer or loader.TEST_ISSUER,
            kid=args.kid,
            public_url=args.public_url,
        )
        print(json.dumps({"cards": cards}, indent=2) if args.json else loader.format_cards(cards))
        return 0
    except (loader.ToolError, OSError, ValueError) as exc:
        print(f"alp-cds {args.command}: {exc}", file=sys.stderr)
        return 2


def write_committee_report(store, settings, path: Path) -> int:
    """``alp-cds feedback-report --html FILE`` (service/committee.py)."""
    from datetime import UTC, datetime

    from sqlalchemy.exc import SQLAlchemyError

    from service import committee
    from service.card_render import OVERRIDE_SYSTEM, card_kinds, override_reason_displays, template
    from service.hooks import all_services

    days, now = settings.OVERRIDE_DAYS, datetime.now(UTC)
    kinds = set(card_kinds())
    try:
        issued, items = store.report_rows()
    except SQLAlchemyError as exc:
        print(f"alp-cds feedback-report: the feedback store cannot be read ({type(exc).__name__})", file=sys.stderr)
        return 3
    groups = committee.build(
        issued,
        items,
        now=now,
        days=days,
        days_of=lambda kind: template(kind).get("remember_days", days) if kind in kinds else days,
        hooks={service.id: service.hook for service in all_services()},
        reason_displays=override_reason_displays(),
        own_system=OVERRIDE_SYSTEM,
    )
    try:
        page = committee.render_html(groups, now=now, days=days)
    except ImportError as exc:  # the charts are drawn with the SMART app's libraries
        print(
            f"alp-cds feedback-report: the HTML report draws its charts with altair and vl-convert ({exc.name} is "
            "missing): pip install 'alp-cds[smart]'",
            file=sys.stderr,
        )
        return 2
    try:
        path.write_text(page, encoding="utf-8")
    except OSError as exc:
        print(f"alp-cds feedback-report: cannot write {path}: {exc.strerror}", file=sys.stderr)
        return 2
    print(f"alp-cds feedback-report: wrote {path} ({len(groups)} card kinds and hooks)")
    return 0


def read_draft_orders(path: str) -> dict:
    """The draft orders of ``alp-cds call``: a Bundle, or the ``context.draftOrders`` of a hook request."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if isinstance(data, dict) and isinstance(data.get("context"), dict) and "draftOrders" in data["context"]:
        data = data["context"]["draftOrders"]
    if not isinstance(data, dict) or data.get("resourceType") != "Bundle":
        raise ValueError(f"{path} holds neither a Bundle of draft orders nor a hook request with context.draftOrders")
    return data


MIGRATE_EXIT = {"current": 0, "behind": 1, "too_new": 2, "unreachable": 3, "failed": 4}


def run_migrate(db: str | None, check: bool, timeout: float | None = None) -> int:
    """``alp-cds migrate``. Exit status: 0 the schema is (now) current; 1 it is behind, or there is no store yet
    (--check); 2 it is newer than this release; 3 the store cannot be reached (connecting failed within
    CDS_FEEDBACK_DB_TIMEOUT); 4 the migration (or check) failed or did not finish within its timeout
    (CDS_MIGRATE_TIMEOUT, 600 s, or --timeout). --check creates nothing (no SQLite file or folder). Messages never
    repeat the URL (it may hold a password)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from service.feedback import FeedbackStore, StoreTimedOut
    from service.migrations import SchemaNotMigrated, SchemaTooNew
    from service.settings import load_settings

    settings = load_settings()
    url = db or settings.FEEDBACK_DB_URL
    seconds = timeout or settings.MIGRATE_TIMEOUT
    parsed = make_url(url)
    on_disk = parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:")
    if check and on_disk and not Path(parsed.database).is_file():
        print("alp-cds migrate: there is no feedback store at that path yet: run alp-cds migrate", file=sys.stderr)
        return MIGRATE_EXIT["behind"]
    store = FeedbackStore(url, seconds, connect=False, connect_timeout=settings.FEEDBACK_DB_TIMEOUT)
    try:
        try:
            with store.engine.connect():
                pass
        except SQLAlchemyError as exc:
            print(f"alp-cds migrate: the feedback store cannot be reached ({type(exc).__name__})", file=sys.stderr)
            return MIGRATE_EXIT["unreachable"]
        if check:
            store.migrate = False
            with store._bounded():
                store._ensure_schema()
            print("alp-cds migrate: the feedback store's schema is current")
            return MIGRATE_EXIT["current"]
        found, now = store.migrate_schema()
    except SchemaTooNew as exc:
        print(f"alp-cds migrate: {exc}", file=sys.stderr)
        return MIGRATE_EXIT["too_new"]
    except SchemaNotMigrated as exc:
        print(f"alp-cds migrate: {exc}", file=sys.stderr)
        return MIGRATE_EXIT["behind"]
    except SQLAlchemyError as exc:
        if isinstance(exc, StoreTimedOut) or timed_out(exc):
            why = f"did not finish within its timeout of {seconds:g} s (CDS_MIGRATE_TIMEOUT or --timeout)"
        else:
            why = "failed"
        what = "check" if check else "migration"
        print(
            f"alp-cds migrate: the {what} {why} ({type(exc).__name__}); its transaction was rolled back",
            file=sys.stderr,
        )
        return MIGRATE_EXIT["failed"]
    finally:
        store.engine.dispose()
    print(f"alp-cds migrate: the feedback store's schema is at {now}" + (f" (was {found})" if found != now else ""))
    return MIGRATE_EXIT["current"]


def timed_out(exc: Exception) -> bool:
    """A statement or lock timeout of PostgreSQL (psycopg's QueryCanceled, LockNotAvailable) or SQLite's busy one."""
    original = getattr(exc, "orig", None)
    name = type(original).__name__ if original is not None else ""
    return name in ("QueryCanceled", "LockNotAvailable") or "database is locked" in str(original or "")


def url_of_bind(bind: str) -> str | None:
    """``http://HOST:PORT`` for a specific address; None for a wildcard or a Unix socket (nobody calls those)."""
    host, _, port = bind.rpartition(":")
    if bind.startswith(("unix:", "fd://")) or not port.isdigit() or is_wildcard(host):
        return None
    return f"http://{host}:{port}"


def gunicorn_argv(bind: str, workers: int, threads: int | None, app: str = "service.app:create_app()") -> list[str]:
    """gunicorn's command line as ``alp-cds serve`` runs it (the benchmark serves its baseline with the same one).
    No gunicorn access log: the app writes one structured line per request itself."""
    tcp = not bind.startswith(("unix:", "fd://"))
    return [
        "gunicorn",
        "--config",
        "python:service.gunicorn_conf",
        "--bind",
        bind,
        "--workers",
        str(workers),
        *(["--threads", str(threads)] if threads else []),
        *(["--reuse-port"] if tcp else []),
        app,
    ]


def address_in_use(bind: str) -> bool:
    """Whether a program listens on ``HOST:PORT`` already (a socket without SO_REUSEPORT cannot bind it then)."""
    host, _, port = bind.rpartition(":")
    try:
        found = socket.getaddrinfo(host.strip("[]") or None, int(port), 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except (socket.gaierror, ValueError, UnicodeError):
        return False  # gunicorn says what is wrong with it
    family, kind, proto, _, address = found[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn: old connections do not count
        try:
            probe.bind(address)
        except OSError:
            return True
    return False


def is_wildcard(host: str) -> bool:
    """Whether gunicorn listens on every interface for ``host``: empty, or an address that is all zeros however it
    is written (``0``, ``0.0.0.0``, ``0x0``, ``[::]``, ``[0::0]``, ``[::ffff:0.0.0.0]``...)."""
    if not host.strip("[]"):
        return True
    try:
        found = socket.getaddrinfo(host.strip("[]"), None, flags=socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError):
        return False  # a name, not an address
    for *_, address in found:
        ip = ipaddress.ip_address(address[0])
        mapped = getattr(ip, "ipv4_mapped", None)
        if ip.is_unspecified or (mapped is not None and mapped.is_unspecified):
            return True
    return False


if __name__ == "__main__":
    raise SystemExit(main())
