"""Server settings, read once from the environment (12-factor): the embedded defaults need no
configuration at all; production sets BITPLAN_DATABASE_URL (PostgreSQL) and RAY_ADDRESS.

Every field names its environment variable (``metadata["env"]``); README.md's settings table
documents each of them, which tests/service/test_settings.py checks."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

# Worker threads for the blocking handlers (BITPLAN_API_THREADS). Few on purpose: every runnable
# thread competes for the GIL with the event loop. bench/service.py at 50 concurrent clients, 2
# CPUs, server pinned to one: 4 threads against 50 gave GET /v1/jobs/{id} p99 65 vs 178 ms
# (SQLite) and 93 vs 300 ms (PostgreSQL), /healthz p99 4 vs 130-150 ms, and equal (SQLite) or
# 1.5x (PostgreSQL) throughput. The 50 clients wait their turn in AnyIO's FIFO limiter instead.
DEFAULT_API_THREADS = 4


def _number(name: str, default, cast=int):
    """An env var as ``cast`` (int or float), the default when unset; a clear exit otherwise."""
    raw = os.environ.get(name)
    try:
        return default if raw in (None, "") else cast(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} must be {'an integer' if cast is int else 'a number'}") from None


def _int(name: str, default: int) -> int:
    return _number(name, default, int)


def _float(name: str, default: float) -> float:
    return _number(name, default, float)


def _path(name: str) -> Path | None:
    """A path as given (resolved where it is used), None when unset or empty."""
    raw = os.environ.get(name)
    return Path(raw) if raw else None


def _env(name: str) -> dict:
    """A field's metadata: the environment variable it is read from."""
    return {"env": name}


def _number_field(name: str, default, cast=int):
    """A numeric setting read from ``name`` when the settings are built, named in its metadata."""
    return field(default_factory=lambda: _number(name, default, cast), metadata=_env(name))


@dataclass(frozen=True)
class Settings:
    var_dir: Path = field(default_factory=lambda: Path(os.environ.get("BITPLAN_VAR_DIR", "var")).resolve(),
                          metadata=_env("BITPLAN_VAR_DIR"))
    database_url: str = field(default="", metadata=_env("BITPLAN_DATABASE_URL"))
    api_token: str | None = field(default_factory=lambda: os.environ.get("BITPLAN_API_TOKEN") or None,
                                  metadata=_env("BITPLAN_API_TOKEN"))
    ray_address: str | None = field(default_factory=lambda: os.environ.get("RAY_ADDRESS") or None,
                                    metadata=_env("RAY_ADDRESS"))
    ray_num_cpus: int | None = field(default_factory=lambda: _int("BITPLAN_RAY_NUM_CPUS", 0) or None,
                                     metadata=_env("BITPLAN_RAY_NUM_CPUS"))
    cors_origins: tuple[str, ...] = field(default_factory=lambda: tuple(
        o.strip() for o in os.environ.get("BITPLAN_CORS_ORIGINS", "").split(",") if o.strip()),
        metadata=_env("BITPLAN_CORS_ORIGINS"))
    # server-side paths (hf:, export:, torchscript: refs and data paths) resolve against this
    # folder; None refuses them all. Kept as given: it is resolved where it is used, and the API
    # hides both spellings from its messages
    model_root: Path | None = field(default_factory=lambda: _path("BITPLAN_MODEL_ROOT"),
                                    metadata=_env("BITPLAN_MODEL_ROOT"))
    # threads of AnyIO's pool, which runs the blocking request handlers (see DEFAULT_API_THREADS)
    api_threads: int = _number_field("BITPLAN_API_THREADS", DEFAULT_API_THREADS)
    max_upload_bytes: int = _number_field("BITPLAN_MAX_UPLOAD_BYTES", 512 << 20)
    # data uploads (POST /v1/data): images kept from one archive, and the bytes an archive may
    # extract to (0: four times the upload limit)
    max_upload_files: int = _number_field("BITPLAN_MAX_UPLOAD_FILES", 100_000)
    max_extracted_bytes: int = _number_field("BITPLAN_MAX_EXTRACTED_BYTES", 0)
    max_body_bytes: int = _number_field("BITPLAN_MAX_BODY_BYTES", 8 << 20)
    lease_seconds: float = _number_field("BITPLAN_LEASE_SECONDS", 20.0, float)
    max_attempts: int = _number_field("BITPLAN_MAX_ATTEMPTS", 3)
    max_running: int = _number_field("BITPLAN_MAX_RUNNING", 2)
    sensitivity_chunks: int = _number_field("BITPLAN_SENSITIVITY_CHUNKS", 0)
    # Ray workers the server warms up per node when it connects (the engine imported before the
    # first job; workers/warm.py): -1 = one per CPU, 0 = none, N = at most N per node
    prewarm_workers: int = _number_field("BITPLAN_PREWARM_WORKERS", -1)
    poll_seconds: float = _number_field("BITPLAN_POLL_SECONDS", 0.25, float)
    # stored evolved proxies (proxy=evolved:<name>), shared with the Ray workers; unset:
    # var_dir/evolved
    evolved_dir: Path | None = field(default_factory=lambda: _path("BITPLAN_EVOLVED_DIR"),
                                     metadata=_env("BITPLAN_EVOLVED_DIR"))

    def __post_init__(self) -> None:
        if not self.database_url:
            url = os.environ.get("BITPLAN_DATABASE_URL") or f"sqlite:///{self.var_dir / 'bitplan.db'}"
            object.__setattr__(self, "database_url", url)
        if self.evolved_dir is None:
            object.__setattr__(self, "evolved_dir", self.var_dir / "evolved")
        if self.max_extracted_bytes <= 0:
            object.__setattr__(self, "max_extracted_bytes", 4 * self.max_upload_bytes)
        if self.api_threads < 1:
            raise SystemExit(f"BITPLAN_API_THREADS={self.api_threads} must be at least 1")

    @property
    def upload_dir(self) -> Path:
        return self.var_dir / "uploads"
