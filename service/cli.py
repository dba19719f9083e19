"""The ``alp-cds`` command: serve the service (gunicorn, or Flask's development server)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="alp-cds", description="Low-ALP CDS Hooks service")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run under gunicorn (production)")
    serve.add_argument("--bind", default="127.0.0.1:8080")
    serve.add_argument("--workers", type=int, default=2)
    dev = sub.add_parser("dev", help="run Flask's development server (reloads on change)")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)

    if args.command == "dev":
        from service.app import create_app

        create_app().run(host=args.host, port=args.port, debug=False, use_reloader=True)
        return 0

    from gunicorn.app.wsgiapp import run

    sys.argv = [
        "gunicorn",
        "--bind",
        args.bind,
        "--workers",
        str(args.workers),
        "--access-logfile",
        "-",
        "--access-logformat",
        '{"event":"http","status":%(s)s,"path":"%(U)s","ms":%(M)s}',
        "service.app:create_app()",
    ]
    run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
