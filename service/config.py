"""Server settings, read once from the environment (12-factor): the embedded defaults need no
configuration at all; production sets BITPLAN_DATABASE_URL (PostgreSQL) and RAY_ADDRESS."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


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


@dataclass(frozen=True)
class Settings:
    var_dir: Path = field(default_factory=lambda: Path(os.environ.get("BITPLAN_VAR_DIR", "var")).resolve())
    database_url: str = ""
    api_token: str | None = field(default_factory=lambda: os.environ.get("BITPLAN_API_TOKEN") or None)
    ray_address: str | None = field(default_factory=lambda: os.environ.get("RAY_ADDRESS") or None)
    ray_num_cpus: int | None = field(default_factory=lambda: _int("BITPLAN_RAY_NUM_CPUS", 0) or None)
    cors_origins: tuple[str, ...] = field(default_factory=lambda: tuple(
        o.strip() for o in os.environ.get("BITPLAN_CORS_ORIGINS", "").split(",") if o.strip()))
    max_upload_bytes: int = field(default_factory=lambda: _int("BITPLAN_MAX_UPLOAD_BYTES", 512 << 20))
    # data uploads (POST /v1/data): images kept from one archive, and the bytes an archive may
    # extract to (0: four times the upload limit)
    max_upload_files: int = field(default_factory=lambda: _int("BITPLAN_MAX_UPLOAD_FILES", 100_000))
    max_extracted_bytes: int = field(default_factory=lambda: _int("BITPLAN_MAX_EXTRACTED_BYTES", 0))
    max_body_bytes: int = field(default_factory=lambda: _int("BITPLAN_MAX_BODY_BYTES", 8 << 20))
    lease_seconds: float = field(default_factory=lambda: _float("BITPLAN_LEASE_SECONDS", 20.0))
    max_attempts: int = field(default_factory=lambda: _int("BITPLAN_MAX_ATTEMPTS", 3))
    max_running: int = field(default_factory=lambda: _int("BITPLAN_MAX_RUNNING", 2))
    sensitivity_chunks: int = field(default_factory=lambda: _int("BITPLAN_SENSITIVITY_CHUNKS", 0))
    poll_seconds: float = field(default_factory=lambda: _float("BITPLAN_POLL_SECONDS", 0.25))

    def __post_init__(self) -> None:
        if not self.database_url:
            url = os.environ.get("BITPLAN_DATABASE_URL") or f"sqlite:///{self.var_dir / 'bitplan.db'}"
            object.__setattr__(self, "database_url", url)
        if self.max_extracted_bytes <= 0:
            object.__setattr__(self, "max_extracted_bytes", 4 * self.max_upload_bytes)

    @property
    def upload_dir(self) -> Path:
        return self.var_dir / "uploads"

    @property
    def evolved_dir(self) -> Path:
        """Stored evolved proxies (proxy=evolved:<name>), shared with the Ray workers."""
        return Path(os.environ.get("BITPLAN_EVOLVED_DIR") or self.var_dir / "evolved")
