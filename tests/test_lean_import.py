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


def package_modules(package: str, skip: tuple[str, ...] = ()) -> list[str]:
    """Every module of a package (new ones are covered without editing this test): importing
    only the package's ``__init__`` would prove nothing when the ``__init__`` is empty."""
    mods = []
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        if name not in mods and name not in skip and "migrations" not in name:
            mods.append(name)
    return mods


def search_modules() -> list[str]:
    return package_modules("search")


def test_search_is_lean():
    out = heavy_modules_after_import(search_modules(), ["torch", "ray", "sqlalchemy", "fastapi", "transformers", "httpx"])
    assert "missing" not in out, out
    assert out["loaded"] == []


def test_search_modules_are_all_found():
    mods = search_modules()
    assert {"search.params", "search.validate", "search.solvers.ilp", "search.exports"} <= set(mods)


def test_proxies_do_not_import_service_stack():
    mods = package_modules("proxies")
    assert len(mods) > 10 and "proxies.registry" in mods
    out = heavy_modules_after_import(mods, ["ray", "sqlalchemy", "fastapi"])
    assert "missing" not in out, out
    assert out["loaded"] == []


def test_workers_do_not_import_the_server():
    """The engine side (workers/, Ray tasks included) never needs the web or database stack."""
    mods = package_modules("workers")
    assert "workers.ray_jobs" in mods and "workers.pipeline" in mods
    out = heavy_modules_after_import(mods, ["sqlalchemy", "fastapi", "uvicorn", "alembic"])
    assert "missing" not in out, out
    assert out["loaded"] == []


API_PROBE = """
import json, sys
from service.api import create_app
from service.config import Settings
from service.jobspec import plan_job
from service.schemas import JobCreate
import service.dispatcher, service.store, service.cli_remote, search.exports
create_app(Settings())
layers = [{"name": f"l{i}", "kind": "Linear", "shape": [64, 64], "numel": 4096, "in_features": 64, "macs": 4096}
          for i in range(4)]
for body in ({"model_id": "m", "budgets": {"avg_bits": 3.3}},
             {"model_id": "m", "budgets": [{"avg_bits": 3.3}, {"avg_bits": 4.2}], "proxy": "hessian_trace",
              "proxy_params": {"tol": 0.2}, "quantizer": "gptq", "quantizer_params": {"damp": 0.05}},
             {"model_id": "m", "budgets": {"avg_bits": 3.0}, "solver": "joint", "solver_params": {"population": 8, "parents": 4}}):
    plan_job(JobCreate.model_validate(body), "builtin:minilm-l6", "m", "text", layers)
print(json.dumps({"loaded": sorted(n for n in ("torch", "transformers", "sklearn") if n in sys.modules)}))
"""


def test_api_process_never_imports_torch():
    """The API validates and plans every kind of job (proxy, quantizer and joint parameters,
    budgets) in a process that never imports torch: a submit must not stall the event loop for
    the seconds a torch import takes, nor grow the server by its memory."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", API_PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"loaded": []}


def test_sdk_is_lean():
    """A laptop installs the client with httpx + pydantic only (DESIGN §1, issue 3)."""
    out = heavy_modules_after_import(["service.client", "service.schemas"],
                                     ["torch", "ray", "sqlalchemy", "fastapi", "numpy", "scipy", "transformers"])
    assert "missing" not in out, out
    assert out["loaded"] == []
