"""The package layout holds: no import cycle and no forbidden edge among gateway/ and web/.

Imports inside functions count (a deferred import that hides a cycle is still a cycle), and
so do `if TYPE_CHECKING:` ones. The rules are data: `FORBIDDEN` below says who may not
import whom, with the reason the architecture gives (docs/architecture.md).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROOTS = ("gateway", "web")

# (importer prefix, imported prefix, exceptions among importers, why)
FORBIDDEN: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("web", "gateway.api", (), "the site never reaches into the HTTP API surface"),
    ("web", "gateway.relay", (), "the site never reaches into the relay"),
    ("gateway.protocol", "gateway", ("gateway.protocol",), "protocol is pure conversion"),
    ("gateway.protocol", "web", (), "protocol is pure conversion"),
    ("gateway.testing", "gateway", ("gateway.testing",),
     "the fakes are independent oracles of the code they fake"),
    ("gateway.testing", "web", (), "the fakes are independent oracles"),
    ("gateway", "web", ("gateway.app",), "only app.py mounts the site on the gateway"),
    ("gateway", "gateway.api", ("gateway.api", "gateway.app"),
     "the API surface is a leaf: only app.py mounts it"),
    ("gateway", "gateway.app", ("gateway.server",), "only the server builds the app"),
    ("gateway", "gateway.server", ("gateway.cli",), "only the CLI starts the server"),
    ("gateway", "gateway.cli", ("gateway.__main__",), "the CLI is the outermost layer"),
    ("web", "gateway.app", (), "handlers read app keys, never the app module"),
    # what each package's __init__ docstring promises
    *((pkg, other, (), f"{pkg} must not import {other}")
      for pkg in ("gateway.accounting", "gateway.accounts", "gateway.billing")
      for other in ("gateway.relay", "gateway.remote", "gateway.reports")),
    *(("gateway.relay", other, (), f"the relay must not import {other}")
      for other in ("gateway.accounting", "gateway.accounts", "gateway.billing",
                    "gateway.remote", "gateway.reports")),
    *(("gateway.providers", other, (), f"providers must not import {other}")
      for other in ("gateway.relay", "gateway.accounting", "gateway.accounts",
                    "gateway.billing", "gateway.remote", "gateway.reports")),
    *(("gateway.store", other, ("gateway.store",), "the store imports only config")
      for other in ("gateway.accounting", "gateway.accounts", "gateway.billing",
                    "gateway.remote", "gateway.reports", "gateway.relay",
                    "gateway.providers", "gateway.protocol")),
)


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere in its source."""
    files = [p for r in ROOTS for p in (ROOT / r).rglob("*.py")]
    modules = {module_name(p): p for p in files}
    packages = {m for m, p in modules.items() if p.name == "__init__.py"}

    def resolve(name: str) -> str | None:
        while name:
            if name in modules:
                return name
            name = name.rpartition(".")[0]
        return None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        package = module if module in packages else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [base, *(f"{base}.{a.name}" for a in node.names)]
            for target in targets:
                found = resolve(target)
                # `import gateway.x` also runs gateway/__init__: not an edge worth keeping
                if found and found != module and not (found in packages
                                                      and _under(module, found)):
                    graph[module].add(found)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def forbidden_edges(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for importer, imported_set in graph.items():
        for imported in sorted(imported_set):
            for who, whom, allowed, why in FORBIDDEN:
                if (_under(importer, who) and _under(imported, whom)
                        and not any(_under(importer, a) for a in allowed)):
                    bad.append(f"{importer} -> {imported}: {why}")
    return bad


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_no_forbidden_imports() -> None:
    assert forbidden_edges(import_graph()) == []


def test_the_checker_sees_what_it_must() -> None:
    """The rules bite: a planted cycle and a planted edge are both reported."""
    planted = {"gateway.a": {"gateway.b"}, "gateway.b": {"gateway.a"},
               "web.pages": {"gateway.relay.routing"}, "gateway.relay.routing": set()}
    assert cycles(planted) == [["gateway.a", "gateway.b"]]
    assert forbidden_edges(planted) == [
        "web.pages -> gateway.relay.routing: the site never reaches into the relay"]
    graph = import_graph()
    assert "gateway.api.messages" in graph["gateway.api.endpoints"]  # function bodies read
    assert "gateway.store.factory" in graph["gateway.app"]


def test_every_package_says_what_it_owns() -> None:
    """Each package's __init__ docstring: what it owns and what it must not import."""
    for init in sorted((ROOT / "gateway").glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        assert len(doc.splitlines()) >= 2, f"{init.relative_to(ROOT)} needs its two lines"


def _is_test_module(module: str) -> bool:
    last = module.rsplit(".", 1)[-1]
    return last.startswith("test_") or last == "conftest"


def imports_of_tests(path: Path) -> list[str]:
    """The `tests.*` modules one file under tests/ imports (anywhere in it)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("tests.")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "tests" or node.module.startswith("tests."):
                found += [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.ImportFrom) and node.level:
            found.append("." * node.level + (node.module or ""))  # relative: never allowed
    return found


def shared_test_code_problems(root: Path) -> list[str]:
    """A test module (test_*.py, conftest.py) is imported by none: what several share lives
    in tests/helpers/ (or another non-test module); relative imports name no place."""
    files = sorted((root / "tests").rglob("*.py"))
    modules = {".".join(p.relative_to(root).with_suffix("").parts) for p in files}
    bad = []
    for path in files:
        for target in imports_of_tests(path):
            where = path.relative_to(root).as_posix()
            if target.startswith("."):
                bad.append(f"{where}: relative import {target}")
            elif target in modules and _is_test_module(target):
                bad.append(f"{where} imports the test module {target}")
    return sorted(set(bad))


def test_no_test_module_imports_another() -> None:
    assert shared_test_code_problems(ROOT) == []


def test_the_test_import_rule_bites(tmp_path: Path) -> None:
    """Planted: an import of another test module, of conftest, and a relative one."""
    (tmp_path / "tests" / "web").mkdir(parents=True)
    for name in ("conftest.py", "web/test_site_pages.py", "web/test_i18n.py"):
        (tmp_path / "tests" / name).write_text("")
    planted = tmp_path / "tests" / "web" / "test_zz_planted_by_layout_test.py"
    planted.write_text("from tests.web.test_site_pages import wrap\n"
                       "from tests.conftest import Gateway\n"
                       "from tests.helpers.gateway import ROOT\n"
                       "from . import test_i18n\n", encoding="utf-8")
    problems = shared_test_code_problems(tmp_path)
    where = "tests/web/test_zz_planted_by_layout_test.py"
    assert problems == [f"{where} imports the test module tests.conftest",
                        f"{where} imports the test module tests.web.test_site_pages",
                        f"{where}: relative import ."]
