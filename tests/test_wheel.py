"""The installed product carries what it needs: a wheel built from this tree, installed into a
fresh virtualenv and run from an empty folder far from the repository (no ../shared beside it),
finds its corpora and runs a search on MiniLM.

The fresh virtualenv gets the third-party dependencies (torch, transformers, …) from the
project's .venv through a path entry, so the test does not download gigabytes; bitplan itself
comes only from the wheel (checked: the modules are imported from the fresh site-packages)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # an in-tree build (no isolation) reuses ./build/lib, which keeps files a later change deleted:
    # start from nothing so the wheel is exactly this tree, and leave nothing behind
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    assert r.returncode == 0, r.stderr
    (whl,) = out.glob("bitplan-*.whl")
    return whl


def test_the_wheel_carries_the_corpora_and_their_licenses(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("wikitext2-valid.txt.gz", "wikitext2-test.txt.gz", "tinyshakespeare.txt.gz", "ATTRIBUTION.md",
              "README.md"):
        assert f"workers/corpora/{f}" in names, f
    assert not any(n.startswith("tests/") for n in names)


def test_fresh_install_runs_a_search_from_an_empty_folder(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # third-party packages from the project's environment; a plain path entry, so the project's
    # own editable install (a .pth hook in that folder) is not activated
    (site / "_bitplan_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    work = tmp_path / "empty" / "here"
    work.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "BITPLAN_DATA_DIR", "VIRTUAL_ENV")}
    env["HOME"] = str(tmp_path / "home")  # no cache or evolved programs from this machine's user
    where = subprocess.run([str(py), "-c", "import workers.data, service.cli; print(workers.data.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(site)), where
    r = subprocess.run([str(env_dir / "bin" / "bitplan"), "search", "--model", "builtin:minilm-l6",
                        "--budget", "avg_bits=3.3", "--proxy", "fisher", "--solver", "ilp", "--n-calib", "8",
                        "--n-eval", "32"], cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    policy = json.loads((work / "policy.json").read_text())
    assert policy["cost"]["avg_bits"] <= 3.3 and policy["model"]["ref"] == "builtin:minilm-l6"
    assert f"wrote the policy to {work / 'policy.json'}" in r.stdout
