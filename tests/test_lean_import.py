"""The direction of imports (DESIGN §1): search/ is numpy/scipy/pydantic only; proxies/ may use
torch but never Ray, SQLAlchemy or FastAPI. Checked in a fresh interpreter, so nothing another
test imported can hide a heavy import."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import importlib, importlib.util, json, sys
mods = {mods!r}
missing = [m for m in mods if importlib.util.find_spec(m.split(".")[0]) is None]
if missing:
    print(json.dumps({{"missing": missing}}))
    raise SystemExit(0)
for m in mods:
    importlib.import_module(m)
print(json.dumps({{"loaded": sorted(n for n in {forbidden!r} if n in sys.modules)}}))
"""


def heavy_modules_after_import(mods: list[str], forbidden: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    proc = subprocess.run([sys.executable, "-c", PROBE.format(mods=mods, forbidden=forbidden)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"importing {mods} failed:\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def search_modules() -> list[str]:
    """Every module of search/ (new ones are covered without editing this test)."""
    mods = ["search", "search.solvers", "search.policy", "search.refine"]
    for path in sorted((ROOT / "search").rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        if name not in mods:
            mods.append(name)
    return mods


def test_search_is_lean():
    out = heavy_modules_after_import(search_modules(), ["torch", "ray", "sqlalchemy", "fastapi", "transformers", "httpx"])
    assert "missing" not in out, out
    assert out["loaded"] == []


def test_proxies_do_not_import_service_stack():
    out = heavy_modules_after_import(["proxies"], ["ray", "sqlalchemy", "fastapi"])
    if "missing" in out:
        pytest.skip("proxies/ is not there yet")
    assert out["loaded"] == []


def test_sdk_is_lean():
    """A laptop installs the client with httpx + pydantic only (DESIGN §1, issue 3)."""
    out = heavy_modules_after_import(["service.client", "service.schemas"],
                                     ["torch", "ray", "sqlalchemy", "fastapi", "numpy", "scipy", "transformers"])
    assert "missing" not in out, out
    assert out["loaded"] == []
