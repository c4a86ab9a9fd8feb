"""What every part of the store stands on: the engine and its sessions, the schema migration,
ids and list cursors, and the errors a caller turns into HTTP answers."""
from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.db import JobEventRow, make_engine, utcnow

MIGRATIONS = Path(__file__).parent.parent / "migrations"


class Conflict(Exception):
    """An Idempotency-Key reused with a different request body, or an impossible transition."""


class BadCursor(ValueError):
    pass


def migrate(url: str) -> None:
    """Bring the schema to the newest Alembic revision (the server does this on start)."""
    cfg = Config(str(MIGRATIONS / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(cfg, "head")


def new_id() -> str:
    return uuid.uuid4().hex


def encode_cursor(row) -> str:
    return base64.urlsafe_b64encode(f"{row.created_at.isoformat()}|{row.id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        at, jid = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        return datetime.fromisoformat(at), jid
    except Exception:
        raise BadCursor("cursor is not one this server issued; start again without ?cursor=") from None


class StoreBase:
    """The engine and a session per unit of work (committed on success, rolled back on error)."""

    def __init__(self, url: str, engine: Engine | None = None):
        self.url = url
        self.engine = engine or make_engine(url)
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._session() as s:
            try:
                yield s
                s.commit()
            except Exception:
                s.rollback()
                raise

    def ping(self) -> None:
        with self.session() as s:
            s.execute(select(1))

    def _event(self, s: Session, job_id: str, status: str, phase: str | None, progress: float, message: str) -> None:
        s.add(JobEventRow(job_id=job_id, at=utcnow(), status=status, phase=phase, progress=progress, message=message))
