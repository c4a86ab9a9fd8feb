"""What jobs read and produce, apart from the jobs themselves: registered models, sensitivity
tables (found again by their key, so a job reuses a cached one) and policies."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from service.db import ModelRow, PolicyRow, SensitivityRow, utcnow
from service.store.base import StoreBase, new_id


class Catalog(StoreBase):
    # models -------------------------------------------------------------------------------
    def add_model(self, info: dict) -> ModelRow:
        """Insert a model or return the existing record with the same weights sha256."""
        existing = self.get_model(info["id"])
        if existing:
            return existing
        row = ModelRow(id=info["id"], ref=info["ref"], kind=info["kind"], metric=info["metric"],
                       n_layers=info["n_layers"], n_weights=info["n_weights"],
                       info={"layers": info["layers"], "max_positions": info.get("max_positions")})
        try:
            with self.session() as s:
                s.add(row)
        except IntegrityError:  # registered concurrently: same weights, same record
            return self.get_model(info["id"])
        return row

    def get_model(self, model_id: str) -> ModelRow | None:
        with self.session() as s:
            return s.get(ModelRow, model_id)

    def list_models(self) -> list[ModelRow]:
        with self.session() as s:
            return list(s.scalars(select(ModelRow).order_by(ModelRow.created_at.desc())))

    # sensitivity tables and policies ------------------------------------------------------
    def table_by_key(self, key: str) -> SensitivityRow | None:
        with self.session() as s:
            return s.scalars(select(SensitivityRow).where(SensitivityRow.key == key)).first()

    def put_table(self, key: str, model_id: str, data: dict) -> str:
        found = self.table_by_key(key)
        if found:
            return found.id
        row = SensitivityRow(id=new_id(), key=key, model_id=model_id, proxy=data["proxy"], data=data, created_at=utcnow())
        try:
            with self.session() as s:
                s.add(row)
        except IntegrityError:
            return self.table_by_key(key).id
        return row.id

    def list_tables(self, model_id: str) -> list[SensitivityRow]:
        with self.session() as s:
            return list(s.scalars(select(SensitivityRow).where(SensitivityRow.model_id == model_id)
                                  .order_by(SensitivityRow.created_at.desc())))

    def get_table(self, table_id: str) -> SensitivityRow | None:
        with self.session() as s:
            return s.get(SensitivityRow, table_id)

    def get_policy(self, policy_id: str) -> PolicyRow | None:
        with self.session() as s:
            return s.get(PolicyRow, policy_id)

    def list_policies(self, model_id: str, limit: int = 500) -> list[PolicyRow]:
        with self.session() as s:
            return list(s.scalars(select(PolicyRow).where(PolicyRow.model_id == model_id)
                                  .order_by(PolicyRow.created_at.desc()).limit(limit)))
