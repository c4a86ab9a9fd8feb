"""Fixtures for the service tests: fresh databases (SQLite file and a throw-away PostgreSQL
database on 127.0.0.1:5432) and real ``bitplan serve`` processes (uvicorn + a local Ray)."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from service.launcher import ServerProcess, free_port

PG_ADMIN = os.environ.get("BITPLAN_TEST_PG", "postgresql://127.0.0.1:5432/test")
TOKEN = "test-token-" + uuid.uuid4().hex[:8]


def pg_available() -> bool:
    try:
        import psycopg
        with psycopg.connect(PG_ADMIN, connect_timeout=3):
            return True
    except Exception:
        return False


def ensure_postgres() -> None:
    """Start the machine's PostgreSQL cluster when it is installed but down (as .ci/run does), so
    ``make test`` needs nothing started by hand; fail with what to do when it cannot be."""
    import shutil
    import subprocess
    import time
    if pg_available():
        return
    clusters = sorted(Path("/etc/postgresql").glob("*")) if Path("/etc/postgresql").is_dir() else []
    if shutil.which("pg_ctlcluster") and clusters:
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", clusters[-1].name, "main", "start"],
                       capture_output=True, timeout=60)
        for _ in range(30):
            if pg_available():
                return
            time.sleep(0.5)
    pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN} and could not be started here: install PostgreSQL 15 "
                "(trust auth for 127.0.0.1) or point BITPLAN_TEST_PG at a server")


@pytest.fixture(scope="session")
def pg_database():
    """A fresh PostgreSQL database per test session, dropped at the end."""
    import psycopg
    ensure_postgres()
    name = f"bitplan_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """Each store test runs on both backends; PostgreSQL gets a fresh schema per test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    import psycopg
    ensure_postgres()
    name = f"bitplan_unit_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    yield f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Server(ServerProcess):
    """A real ``bitplan serve`` subprocess on a free port with test settings. ``stop()`` is
    graceful, ``kill()`` is SIGKILL."""

    def __init__(self, var_dir: Path, database_url: str, token: str | None = TOKEN, **env: str):
        self.var_dir, self.database_url, self.token = var_dir, database_url, token
        port = free_port()
        full = {**os.environ, "BITPLAN_VAR_DIR": str(var_dir), "BITPLAN_DATABASE_URL": database_url,
                "BITPLAN_RAY_NUM_CPUS": "2", "BITPLAN_POLL_SECONDS": "0.1", "PYTHONUNBUFFERED": "1",
                "BITPLAN_MAX_UPLOAD_BYTES": str(2 << 20), "BITPLAN_MODEL_ROOT": str(var_dir / "models"),
                **({"BITPLAN_API_TOKEN": token} if token else {}), **env}
        if "RAY_ADDRESS" not in env:
            full.pop("RAY_ADDRESS", None)
        super().__init__(port, var_dir / f"server-{port}.log", full)

    def start(self, timeout: float = 120) -> "Server":
        super().start(timeout)
        return self

    def client(self):
        from service.client import Client
        return Client(self.url, self.token, timeout=120)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request, tmp_path_factory):
    """One real server per backend for a test module (a token is required on both)."""
    var = tmp_path_factory.mktemp(f"var-{request.param}")
    if request.param == "sqlite":
        url = f"sqlite:///{var / 'bitplan.db'}"
        srv = Server(var, url).start()
        yield srv
        srv.stop()
        return
    url = request.getfixturevalue("pg_database")
    srv = Server(var, url).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def digits_id(server) -> str:
    with server.client() as c:
        return c.register_model("builtin:digits-cnn").id
