"""docker-compose.yml cannot be run here (no Docker daemon), so it is checked as data: the four
services, their wiring, healthchecks, volumes, the GPU reservation, and that every BITPLAN_*
variable it sets is one the server reads (and loads into Settings)."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from service.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _resolve(value: str) -> str:
    """Compose's ${VAR:-default} / ${VAR:?msg} interpolation, with every variable unset."""
    value = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)
    return re.sub(r"\$\{[A-Z_]+:\?[^}]*\}", "set-by-operator", value)


def test_services_and_wiring():
    c = _compose()
    s = c["services"]
    assert set(s) == {"api", "postgres", "ray-head", "ray-worker", "ray-worker-gpu"}
    assert all("healthcheck" in svc for svc in s.values())
    assert "8000:8000" in s["api"]["ports"]
    assert s["api"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert s["api"]["depends_on"]["ray-head"]["condition"] == "service_healthy"
    assert "pg-data:/var/lib/postgresql/data" in s["postgres"]["volumes"] and "pg-data" in c["volumes"]
    gpu = s["ray-worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"] and gpu["driver"] == "nvidia"
    assert s["ray-worker-gpu"]["profiles"] == ["gpu"]  # opt-in: a CPU-only host never waits for a GPU
    for name in ("ray-worker", "ray-worker-gpu"):
        assert "--address=ray-head:6379" in s[name]["command"]
    assert "--head" in s["ray-head"]["command"] and "--port=6379" in s["ray-head"]["command"]
    # uploads must be on a volume that every Ray node mounts at the same path
    for name in ("api", "ray-head", "ray-worker", "ray-worker-gpu"):
        assert "bitplan-data:/data" in s[name]["volumes"]


def test_a_cpu_only_deployment_has_cpus_to_run_jobs():
    """The head and the API join with --num-cpus=0; without a GPU only the default (profile-less)
    worker is started, so it must offer CPUs: no --num-cpus=0 and no device reservation."""
    s = _compose()["services"]
    default = {n: svc for n, svc in s.items() if not svc.get("profiles")}
    cpu_workers = [n for n, svc in default.items() if n.startswith("ray-worker")]
    assert cpu_workers == ["ray-worker"]
    w = s["ray-worker"]
    assert "--num-cpus=0" not in w["command"] and "deploy" not in w
    assert "--num-cpus=0" in s["ray-head"]["command"]


def test_environment_is_what_the_server_reads(monkeypatch):
    c = _compose()
    known = set(re.findall(r'"(BITPLAN_[A-Z_]+)"', (ROOT / "service" / "config.py").read_text()))
    known |= {"BITPLAN_UPLOAD_DIR", "BITPLAN_MODEL_ROOT", "BITPLAN_EVOLVED_DIR"}  # read by the workers' sources and proxies
    env = {k: _resolve(str(v)) for k, v in c["services"]["api"]["environment"].items()}
    assert {k for k in env if k.startswith("BITPLAN_")} <= known
    pg = c["services"]["postgres"]["environment"]
    url = env["BITPLAN_DATABASE_URL"]
    assert url == f"postgresql://{pg['POSTGRES_USER']}:{_resolve(pg['POSTGRES_PASSWORD'])}@postgres:5432/{pg['POSTGRES_DB']}"
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    settings = Settings()
    assert settings.database_url == url and settings.ray_address == "auto"
    assert settings.api_token == "set-by-operator" and str(settings.var_dir) == "/data"


def test_dockerfile_installs_every_package():
    text = (ROOT / "Dockerfile").read_text()
    for pkg in ("search", "proxies", "workers", "service"):
        assert f"COPY {pkg} {pkg}" in text
    assert "torch==${TORCH_VERSION}" in text and ".[engine,service]" in text
    # the corpora are package data: the image checks that the installed package reads them
    assert "paragraphs(s) for s in BUILTIN_TEXT" in text
