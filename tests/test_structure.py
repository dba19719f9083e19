"""The code's shape: the import graph has no cycle, every library the code imports is declared, and the package as
installed (a wheel, as the Docker image installs it) holds every file the service reads at run time."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OWN = ("service", "cards")


def modules() -> dict[str, Path]:
    """Every module of the code, Alembic's scripts (``service/migrations/env.py``, ``versions/``) included: Alembic
    loads them itself when a migration runs, but what they import is imported then all the same."""
    found = {}
    for top in OWN:
        for path in sorted((ROOT / top).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found[name] = path
    return found


def node_of(module: str, known: dict[str, Path]) -> str:
    """A subpackage counts as one node (service.clinical, service.fhir, ...); the modules directly in ``service``
    each count alone (service.errors is a leaf that every layer may use, service.app sits on top)."""
    package = ".".join(known[module].relative_to(ROOT).parent.parts)
    return module if package == "service" else package


def module_level(body: list[ast.stmt]) -> list[ast.stmt]:
    """The statements run when a module is imported, or read as its types: its body and what module-level ``if``
    (``if TYPE_CHECKING:`` included: a reader and a type checker follow those imports), ``try`` and ``with`` blocks
    hold; not the bodies of functions and classes."""
    found = []
    for node in body:
        found.append(node)
        if isinstance(node, ast.If | ast.With):
            found += module_level([*node.body, *getattr(node, "orelse", [])])
        elif isinstance(node, ast.Try):
            found += module_level(
                [*node.body, *node.orelse, *node.finalbody, *(s for h in node.handlers for s in h.body)]
            )
    return found


def imported(path: Path, *, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = module_level(tree.body) if top_level_only else list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def package_graph() -> dict[str, set[str]]:
    """Imports made when a module is imported (module level); a function-level import runs later, by design."""
    known = modules()
    graph: dict[str, set[str]] = {node_of(m, known): set() for m in known}
    for module, path in known.items():
        for target in imported(path, top_level_only=True):
            if target in known and node_of(target, known) != node_of(module, known):
                graph[node_of(module, known)].add(node_of(target, known))
    return graph


def module_graph() -> dict[str, set[str]]:
    """Every module against the modules it imports at module level (``from service.clinical import rules`` names
    ``service.clinical.rules``), inside packages too: rules.py and chart.py are two nodes here."""
    known = modules()
    return {
        module: {target for target in imported(path, top_level_only=True) if target in known and target != module}
        for module, path in known.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target, [*path, target])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_the_import_graph_of_the_packages_has_no_cycle():
    graph = package_graph()
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])
    # the layers the design names: content and clinical core at the bottom, HTTP at the top
    assert graph["cards"] == set(), "the card content is data: it imports nothing"
    assert not {n for n in graph["service.clinical"] if n.startswith("service.") and n != "service.clinical"} - {
        "service.settings"
    }, "the clinical core imports no FHIR, hooks, HTTP or storage code"
    for below in ("service.hooks", "service.fhir", "service.clinical", "service.smart"):
        assert "service.endpoints" not in graph[below], f"{below} imports the HTTP endpoints"


def test_the_import_graph_of_the_modules_has_no_cycle():
    """Down to the modules, inside service/clinical/ too: facts -> chart -> rules -> views, one way (issue 29); the
    feedback store's tables sit below the store and Alembic's env.py alike."""
    graph = module_graph()
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])
    assert "service.migrations.env" in graph and "service.clinical.samples" in graph  # none left out
    below_the_rules = ("facts", "alp", "codes", "context", "treatment", "samples", "chart")
    for module in below_the_rules:
        assert not {t for t in graph[f"service.clinical.{module}"] if t.startswith("service.clinical.rules")}, module
    assert "service.feedback" not in graph["service.migrations.env"]


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"b"}}) is None


def declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]

    def names(requirements: list[str]) -> set[str]:
        return {re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}

    return names(project["dependencies"]), names(project["optional-dependencies"]["smart"])


def test_every_library_the_service_imports_is_declared():
    """A library that is only there because another one pulls it in can vanish with that one's next release."""
    base, smart = declared()
    distributions = importlib.metadata.packages_distributions()
    for module, path in modules().items():
        for name in imported(path, top_level_only=False):
            top = name.split(".")[0]
            if top in OWN or top in sys.stdlib_module_names or top == "__future__":
                continue
            owners = {d.lower().replace("_", "-") for d in distributions.get(top, [])}
            assert owners, f"{module} imports {top}, which no installed distribution provides"
            # The SMART app, and the committee's report, which draws its charts with the app's libraries.
            allowed = base | smart if module.startswith(("service.smart", "service.committee")) else base
            assert owners & allowed, f"{module} imports {top} ({sorted(owners)}) but pyproject.toml does not declare it"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of the source tree's files (tracked or new, not ignored): a local ``*.egg-info`` left by
    an earlier build lists files setuptools would then pack whatever pyproject.toml says."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("alp_cds-*.whl")
    return built


def test_the_wheel_holds_every_data_file_of_the_packages(wheel):
    """Everything in the package folders that is not Python is read at run time (templates, tables, schemas)."""
    with zipfile.ZipFile(wheel) as archive:
        packed = set(archive.namelist())
    for top in OWN:
        for path in (ROOT / top).rglob("*"):
            if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts:
                assert path.relative_to(ROOT).as_posix() in packed, f"{path.relative_to(ROOT)} is not in the wheel"


def test_the_installed_package_answers_hook_calls(wheel, tmp_path):
    """As the Docker image runs it: installed from the wheel, started away from the source tree."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    script = f"""
import json, service
assert service.__file__.startswith({str(site)!r}), service.__file__
from service.app import create_app
app = create_app({{"AUTH": False, "FEEDBACK_DB_URL": "sqlite:///{tmp_path}/f.db",
                  "REPLAY_STORE_URL": "sqlite:///{tmp_path}/r.db"}})
client = app.test_client()
out = {{}}
for name, service_id in (("single-low-in", "low-alp-workup"), ("order-low-alp-in", "antiresorptive-low-alp")):
    body = json.load(open({str(ROOT / "fixtures" / "requests")!r} + "/" + name + ".json"))
    answer = client.post("/cds-services/" + service_id, json=body)
    out[name] = [answer.status_code, [card["summary"] for card in answer.get_json().get("cards", [])]]
out["pages"] = [client.get(path).status_code for path in ("/cds-services", "/", "/openapi.json", "/readyz")]
print(json.dumps(out))
"""
    run = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result.pop("pages") == [200, 200, 200, 200]
    for name, (status, summaries) in result.items():
        expected = json.loads((ROOT / "fixtures" / "responses" / f"{name}.json").read_text(encoding="utf-8"))
        assert status == 200 and summaries == [card["summary"] for card in expected["cards"]] and summaries, name
