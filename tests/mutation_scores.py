"""Mutation score per module from the last ``mutmut run`` (docs/testing.md): killed (timeouts count as killed: the
mutant changed behaviour enough to hang a test), survived, and any other status, then the surviving mutants.

Run from the project root after ``mutmut run``: ``.venv/bin/python tests/mutation_scores.py``.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code


def main() -> int:
    metas = sorted(Path("mutants").glob("service/**/*.py.meta"))
    if not metas:
        print("no results: run `nice -n 10 .venv/bin/mutmut run` first", file=sys.stderr)
        return 1
    survivors: list[str] = []
    print(f"{'module':40} {'mutants':>7} {'killed':>7} {'survived':>8} {'other':>5} {'score':>6}")
    for meta in metas:
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        statuses = Counter(status_by_exit_code[code] for code in codes.values())
        killed = statuses["killed"] + statuses["timeout"]
        survived = statuses["survived"]
        other = len(codes) - killed - survived
        module = str(meta.relative_to("mutants"))[: -len(".meta")]
        score = 100 * killed / len(codes) if codes else 0.0
        print(f"{module:40} {len(codes):7} {killed:7} {survived:8} {other:5} {score:5.1f}%")
        survivors += [name for name, code in codes.items() if status_by_exit_code[code] != "killed"
                      and status_by_exit_code[code] != "timeout"]  # fmt: skip
    print("\nnot killed (see `mutmut show NAME`):")
    for name in survivors:
        print(f"  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
