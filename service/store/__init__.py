"""The durable store: every model, job (with its progress log), sensitivity table and policy.

All SQL goes through the ORM. Every change of a job's status goes through ``transition``: one
conditional UPDATE (``… WHERE status = 'queued'``) on a move the state machine allows
(service/jobstate.py), so two servers or a cancel arriving mid-finish never both win. Works the
same on SQLite (WAL) and PostgreSQL.

``Store`` is one object for its callers, assembled from one class per concern: ``base``
(engine, sessions, migrations, cursors), ``jobs`` (create and read), ``lifecycle`` (status
changes), ``recovery`` (jobs of stopped servers) and ``catalog`` (models, tables, policies)."""
from __future__ import annotations

from service.store.base import MIGRATIONS, BadCursor, Conflict, decode_cursor, encode_cursor, migrate, new_id
from service.store.catalog import Catalog
from service.store.recovery import JobRecovery


class Store(JobRecovery, Catalog):
    """The store of one database URL (``engine`` optional: a caller's own, e.g. a test's)."""


__all__ = ["MIGRATIONS", "BadCursor", "Conflict", "Store", "decode_cursor", "encode_cursor", "migrate", "new_id"]
