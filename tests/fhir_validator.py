"""The FHIR validator of the tests: HAPI FHIR's validation module (``FhirInstanceValidator``, which runs
org.hl7.fhir.validation, the engine of the official validator_cli) on the R4 core definitions, offline.

``tests/fhir-validator`` is a small Java module on the HAPI jars from Maven Central (the version of
``tests/hapi-server``, so its build finds them in ``~/.m2``); it is built as the HAPI test server is, once, into a
cache directory outside the checkout (``$ALPCDS_CACHE``, else ``~/.cache/alp-cds``), and rebuilt only when its
sources change.

    python3 tests/fhir_validator.py --build             # only build (.ci/run); prints the jar's path
    python3 tests/fhir_validator.py FILE_OR_DIR...      # validate; one line per issue

It needs Java 17 or later and Maven (Debian: ``apt-get install openjdk-17-jdk-headless maven``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

try:
    from tests.hapi_server import Unavailable, build_module
except ImportError:  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.hapi_server import Unavailable, build_module

MODULE = Path(__file__).resolve().parent / "fhir-validator"


@dataclass(frozen=True)
class Issue:
    file: str
    severity: str  # fatal | error | warning | information
    location: str
    message: str


def ensure_built() -> Path:
    """The validator's jar, built with Maven when this version of its sources has not been built yet."""
    return build_module(MODULE, "fhir-validator", "the FHIR validator", "validator.build.dir")


def validate(paths: list[Path], timeout: float = 900) -> tuple[int, list[Issue]]:
    """(how many files were checked, every issue the validator reported)."""
    jar = ensure_built()
    command = ["java", "-Xmx1g", "-XX:+UseSerialGC", "-jar", str(jar), *map(str, paths)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    lines = done.stdout.splitlines()
    if done.returncode != 0 or not lines or not lines[-1].startswith("checked "):
        raise RuntimeError(f"the validator failed (exit {done.returncode}): {(done.stdout + done.stderr)[-3000:]}")
    issues = [Issue(*line.split("\t", 3)) for line in lines[:-1] if line.count("\t") >= 3]
    return int(lines[-1].split()[1]), issues


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build", action="store_true", help="only build the validator (cached) and print its jar")
    parser.add_argument("paths", nargs="*", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.build or not args.paths:
            print(ensure_built())
            return 0
        checked, issues = validate(args.paths)
    except Unavailable as exc:
        print(exc, file=sys.stderr)
        return 2
    for issue in issues:
        print(f"{issue.severity}\t{issue.file}\t{issue.location}\t{issue.message}")
    print(f"checked {checked} files")
    return 1 if any(i.severity in ("error", "fatal") for i in issues) else 0


if __name__ == "__main__":
    sys.exit(main())
