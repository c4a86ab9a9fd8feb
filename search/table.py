"""Sensitivity tables: an L×K matrix of predicted loss increase for quantizing layer l with
format k (all other layers in float), from one proxy, with the provenance that makes it
reusable (DESIGN §2)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from search.formats import Format
from search.layers import LayerInfo


@dataclass
class SensitivityTable:
    """What a proxy returns. ``values[l, k]`` is in the proxy's own loss unit (the solvers only
    compare sums); ``stderr`` is set for stochastic proxies; ``timing`` holds seconds per phase."""

    layers: list[LayerInfo]
    formats: list[Format]
    values: np.ndarray
    proxy: str
    params: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)
    stderr: np.ndarray | None = None
    timing: dict = field(default_factory=dict)
    model_sha256: str = ""
    diagnostics: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=np.float64)
        if self.values.shape != (len(self.layers), len(self.formats)):
            raise ValueError(f"table shape {self.values.shape} != (layers={len(self.layers)}, formats={len(self.formats)})")
        if not np.all(np.isfinite(self.values)):
            raise ValueError(f"proxy {self.proxy!r} produced non-finite sensitivities")

    @property
    def key(self) -> str:
        """Content key (model weights, proxy + params, calibration data, formats): equal keys
        mean the table can be reused instead of recomputed."""
        return table_key(self.model_sha256, self.proxy, self.params, self.calibration, self.formats)

    def restrict(self, formats: list[Format]) -> "SensitivityTable":
        """The same table on a subset of its formats (e.g. to solve with fewer candidates)."""
        idx = [self.formats.index(f) for f in formats]
        return SensitivityTable(self.layers, formats, self.values[:, idx], self.proxy, self.params,
                                self.calibration, None if self.stderr is None else self.stderr[:, idx],
                                self.timing, self.model_sha256, self.diagnostics)

    def to_dict(self) -> dict:
        return {
            "schema": "bitplan.sensitivity/v1", "key": self.key, "proxy": self.proxy, "params": self.params,
            "calibration": self.calibration, "model_sha256": self.model_sha256,
            "layers": [l.to_dict() for l in self.layers], "formats": [f.to_dict() for f in self.formats],
            "values": self.values.tolist(), "stderr": None if self.stderr is None else self.stderr.tolist(),
            "timing": self.timing, "diagnostics": self.diagnostics,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "SensitivityTable":
        return cls([LayerInfo.from_dict(x) for x in d["layers"]], [Format.from_dict(x) for x in d["formats"]],
                   np.array(d["values"]), d["proxy"], d.get("params", {}), d.get("calibration", {}),
                   None if d.get("stderr") is None else np.array(d["stderr"]), d.get("timing", {}),
                   d.get("model_sha256", ""), d.get("diagnostics", {}))


def table_key(model_sha256: str, proxy: str, params: dict, calibration: dict, formats: list[Format]) -> str:
    blob = json.dumps({"model": model_sha256, "proxy": proxy, "params": params, "calibration": calibration,
                       "formats": [f.to_dict() for f in formats]}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()
