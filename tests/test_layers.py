"""The layering of DESIGN §1, read from the source (no import runs): imports point one way,
``service → workers → proxies → search``, so a job's walk from POST /v1/jobs to its policy
passes each package once, in that order. Every import statement counts, the ones inside
functions too: a lazy import that points back up is still back-and-forth.
tests/test_lean_import.py checks what importing actually loads; this checks what the code names."""
from __future__ import annotations

import ast
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ORDER = ("service", "workers", "proxies", "search")  # each may import only itself and those after it
# third-party packages a package never names, not even in a function (DESIGN §1)
FORBIDDEN = {
    "search": {"torch", "ray", "sqlalchemy", "alembic", "fastapi", "starlette", "uvicorn", "httpx", "transformers"},
    "proxies": {"ray", "sqlalchemy", "alembic", "fastapi", "starlette", "uvicorn", "httpx"},
    "workers": {"sqlalchemy", "alembic", "fastapi", "starlette", "uvicorn", "httpx"},
}
SEARCH_THIRD_PARTY = {"numpy", "scipy", "pydantic"}  # all that search/ uses beside the standard library
SDK_THIRD_PARTY = {"httpx", "pydantic"}              # the client a laptop installs (DESIGN §1)


def source_files(package: str) -> list[Path]:
    return [p for p in sorted((ROOT / package).rglob("*.py")) if "migrations" not in p.parts]


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


@cache
def imports(path: Path) -> tuple[tuple[str, bool], ...]:
    """Each imported module as (dotted name, at module level); relative imports resolved.
    ``from a import b`` names ``a.b`` too, as b may be a module. Imports under ``if
    TYPE_CHECKING:`` are left out: they never run."""
    out: list[tuple[str, bool]] = []
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for c in child.orelse:
                    visit(c, top)
                continue
            if isinstance(child, ast.Import):
                out.extend((a.name, top) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                out.append((base, top))
                out.extend((f"{base}.{a.name}", top) for a in child.names if a.name != "*")
            visit(child, top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(path.read_text(encoding="utf-8")), True)
    return tuple(out)


def roots(path: Path) -> set[str]:
    return {name.split(".")[0] for name, _ in imports(path)}


def first_party(name: str) -> Path | None:
    """The file of a first-party module (None: third-party, stdlib, or a name inside a module)."""
    base = ROOT.joinpath(*name.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if name.split(".")[0] in ORDER and p.is_file():
            return p
    return None


def test_the_scan_covers_every_package_and_the_new_modules():
    """A renamed or moved package must not drop out of the check unnoticed."""
    files = {str(p.relative_to(ROOT)) for pkg in ORDER for p in source_files(pkg)}
    for expected in ("service/api/routes/jobs.py", "service/jobspec.py", "service/dispatcher.py",
                     "service/cli/parser.py", "service/cli_remote/commands.py", "service/uploads/__init__.py",
                     "service/store/lifecycle.py", "service/client/sync.py", "workers/ray_jobs.py",
                     "workers/pipeline.py", "workers/prepare.py", "workers/joint.py", "proxies/joint.py",
                     "search/evolved/genetic.py", "search/solvers/joint.py", "search/validate.py", "search/spec.py",
                     "search/defaults.py"):
        assert expected in files, f"{expected} is gone; update this test's list"


@pytest.mark.parametrize("package", ORDER)
def test_imports_point_one_way(package):
    allowed_up = set(ORDER[: ORDER.index(package)])
    wrong = {f"{p.relative_to(ROOT)} imports {sorted(roots(p) & allowed_up)}"
             for p in source_files(package) if roots(p) & allowed_up}
    assert not wrong, f"{package}/ must import only {ORDER[ORDER.index(package):]} (service → workers → " \
                      f"proxies → search): {sorted(wrong)}"


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_forbidden_stack(package):
    wrong = {f"{p.relative_to(ROOT)} imports {sorted(roots(p) & FORBIDDEN[package])}"
             for p in source_files(package) if roots(p) & FORBIDDEN[package]}
    assert not wrong, sorted(wrong)


def test_search_uses_only_numpy_scipy_pydantic():
    std = set(sys.stdlib_module_names) | {"__future__"}
    used = {r for p in source_files("search") for r in roots(p)} - std - {"search"}
    assert used <= SEARCH_THIRD_PARTY, f"search/ imports {sorted(used - SEARCH_THIRD_PARTY)}"


def test_sdk_reaches_only_httpx_and_pydantic():
    """What ``import service.client`` runs, module by module (package __init__ files included):
    first-party modules it reaches at module level, and the third-party packages they name."""
    std = set(sys.stdlib_module_names) | {"__future__"}
    todo, seen, third = ["service.client"], set(), set()
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ first
            path = first_party(".".join(parts[:i]))
            if path is None or path in seen:
                continue
            seen.add(path)
            for imported, top in imports(path):
                if not top:
                    continue
                if imported.split(".")[0] in ORDER:
                    todo.append(imported)
                elif imported.split(".")[0] not in std:
                    third.add(imported.split(".")[0])
    reached = sorted(module_name(p) for p in seen)
    assert {"service.client.sync", "service.schemas"} <= set(reached)
    assert not [m for m in reached if m.split(".")[0] in ("workers", "proxies")], reached
    assert third <= SDK_THIRD_PARTY, f"the SDK reaches {sorted(third - SDK_THIRD_PARTY)} through {reached}"
