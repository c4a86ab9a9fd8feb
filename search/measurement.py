"""Import an exllamav2 ``measurement.json`` as an option table bitplan's solvers can use.

exllamav2's converter measures, for every attention/MLP/MoE module, a list of quantization
options (each a mix of bit-widths per sub-layer, ``QParams``) with the module's output accuracy
and the options' exact storage (``total_bits``). Users who already ran that measurement can solve
the allocation with bitplan's exact ILP (certificate included) instead of exllamav2's simulated
annealing: the error of an option is ``1 − accuracy``, summed over modules, as DESIGN's additive
tables are, and the cost is ``total_bits``.

The file stores no weight counts, so ``avg_bits`` budgets need the model's shapes; they are read
from the checkpoint's safetensors headers (no weights are loaded). ``size_bytes`` works without.
Pure Python + numpy: no torch."""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from search.budgets import feasible_range, within
from search.problem import Problem
from search.solvers import get_solver

SCHEMA = "bitplan.measurement/v1"
MODULE_KINDS = ("self_attn", "mlp", "block_sparse_moe", "linear_attn")


class MeasurementError(ValueError):
    """The file is not an exllamav2 measurement, or a budget cannot be met."""


@dataclass
class Option:
    desc: str
    total_bits: int
    error: float
    sublayers: dict[str, dict]

    def to_dict(self) -> dict:
        return {"desc": self.desc, "total_bits": self.total_bits, "error": self.error, "sublayers": self.sublayers}


@dataclass
class OptionTable:
    """Modules (exllamav2 keys, e.g. ``model.layers.0.self_attn``) × their measured options."""

    modules: list[str]
    options: list[list[Option]]
    numel: dict[str, int] = field(default_factory=dict)
    source: str = ""

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "source": self.source, "error": "1 - accuracy (exllamav2 measurement)",
                "modules": [{"name": m, "numel": self.numel.get(m), "options": [o.to_dict() for o in opts]}
                            for m, opts in zip(self.modules, self.options)]}


def _desc(sub: dict) -> str:
    """exllamav2's own option description, e.g. ``0.05:3b_64g/0.95:2b_64g s4``."""
    gs = {int(k): v for k, v in (sub.get("group_size") or {}).items()}
    parts = [f"{p:g}:{b}b_{gs.get(b, '?')}g" for b, p in zip(sub.get("bits", []), sub.get("bits_prop", []))]
    return "/".join(parts) + f" s{sub.get('scale_bits', '?')}"


def parse_measurement(data: object, source: str = "") -> OptionTable:
    """Validate and read the document; every problem names the key to fix."""
    if not isinstance(data, dict) or not isinstance(data.get("measurement"), dict):
        raise MeasurementError("not an exllamav2 measurement.json: it needs a top-level 'measurement' object "
                               "(module name → list of options), as convert.py -om writes")
    modules, options = [], []
    for key, entry in data["measurement"].items():
        if entry is None:
            continue  # norms, lm_head: measured by exllamav2 as null
        if isinstance(entry, dict):  # parallel decoder blocks: {"attn": [...], "mlp": [...]}
            raise MeasurementError(f"measurement[{key!r}]: parallel attn/mlp blocks are not supported yet")
        if not isinstance(entry, list) or not entry:
            raise MeasurementError(f"measurement[{key!r}] must be a non-empty list of options")
        opts = []
        for j, rec in enumerate(entry):
            where = f"measurement[{key!r}][{j}]"
            if not isinstance(rec, dict) or "accuracy" not in rec or "total_bits" not in rec:
                raise MeasurementError(f"{where}: an option needs 'accuracy' and 'total_bits'")
            acc, bits = rec["accuracy"], rec["total_bits"]
            if isinstance(acc, bool) or not isinstance(acc, (int, float)) or not 0 < acc <= 1:
                raise MeasurementError(f"{where}: accuracy must be in (0, 1], got {acc!r}")
            if isinstance(bits, bool) or not isinstance(bits, (int, float)) or bits <= 0:
                raise MeasurementError(f"{where}: total_bits must be a positive number, got {bits!r}")
            subs = {k: v for k, v in rec.items() if isinstance(v, dict)}
            by_desc: dict[str, list[str]] = {}
            for k, v in subs.items():
                by_desc.setdefault(_desc(v), []).append(k)
            desc = " | ".join(f"{'/'.join(ks)} {d}" for d, ks in by_desc.items()) if subs else f"option {j}"
            opts.append(Option(desc, int(bits), 1.0 - float(acc), subs))
        modules.append(key)
        options.append(opts)
    if not modules:
        raise MeasurementError("the measurement has no measured modules (every entry is null)")
    return OptionTable(modules, options, source=source)


def load_measurement(path: str | Path) -> OptionTable:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise MeasurementError(f"{p}: {e.strerror or e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise MeasurementError(f"{p}: not JSON ({e.msg} at line {e.lineno})") from None
    return parse_measurement(data, str(p))


def safetensors_numel(model_dir: str | Path) -> dict[str, int]:
    """Tensor name → element count from the headers of every ``*.safetensors`` in a checkpoint
    folder: 8 bytes of header length, then a JSON header with each tensor's shape."""
    d = Path(model_dir)
    files = sorted(d.glob("*.safetensors")) if d.is_dir() else []
    if not files:
        raise MeasurementError(f"{d}: no *.safetensors files to read weight shapes from")
    out: dict[str, int] = {}
    for f in files:
        with f.open("rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, meta in header.items():
            if name != "__metadata__":
                out[name] = int(np.prod(meta["shape"])) if meta["shape"] else 1
    return out


def attach_numel(table: OptionTable, tensors: dict[str, int]) -> None:
    """Each module's weight count: its quantized sub-layers' ``.weight`` tensors (all experts of
    an MoE block), which is what exllamav2's bits-per-weight divides by."""
    for m, opts in zip(table.modules, table.options):
        subs = set(k for o in opts for k in o.sublayers)
        prefix = m + "."
        n = sum(v for k, v in tensors.items() if k.startswith(prefix) and k.endswith(".weight")
                and (not subs or k[len(prefix):].split(".")[0] in subs | {"experts"}))
        if n == 0:
            raise MeasurementError(f"the checkpoint has no weights under {m!r}: is it the model that was measured?")
        table.numel[m] = n


class _OptionCosts:
    """The cost interface the solvers read (``matrix``/``cost``) over option columns."""

    def __init__(self, bits: np.ndarray, total_numel: float | None):
        self.bits, self.total_numel = bits, total_numel
        self.matrices = {"size_bytes": bits / 8.0}
        if total_numel:
            self.matrices["avg_bits"] = bits / total_numel

    def matrix(self, metric: str) -> np.ndarray:
        if metric not in self.matrices:
            hint = " (avg_bits needs the model's shapes: pass the checkpoint folder, --model DIR)" if metric == "avg_bits" else ""
            raise MeasurementError(f"budget {metric!r} is not available for a measurement{hint}; use size_bytes")
        return self.matrices[metric]

    def cost(self, choice: np.ndarray) -> dict[str, float]:
        bits = float(self.bits[np.arange(len(choice)), choice].sum())
        out = {"size_bytes": bits / 8.0, "total_bits": bits}
        if self.total_numel:
            out["avg_bits"] = bits / self.total_numel
        return out


def solve_measurement(table: OptionTable, budgets: dict[str, float], solver: str = "ilp") -> dict:
    """One option per module minimising Σ(1 − accuracy) under the budgets. Modules have different
    option counts; shorter lists are padded by repeating their last option, which changes nothing."""
    K = max(len(o) for o in table.options)
    pad = [opts + [opts[-1]] * (K - len(opts)) for opts in table.options]
    err = np.array([[o.error for o in row] for row in pad])
    bits = np.array([[o.total_bits for o in row] for row in pad], dtype=np.float64)
    total = float(sum(table.numel.values())) if len(table.numel) == len(table.modules) else None
    costs = _OptionCosts(bits, total)
    for m, lim in budgets.items():
        M = costs.matrix(m)
        lo, hi = float(M.min(axis=1).sum()), float(M.max(axis=1).sum())
        if lim < lo:
            raise MeasurementError(f"budget {m}={lim:g} is below the cheapest option set; {feasible_range(lo, hi)}")
    problem = Problem(err, costs, budgets)
    sol = get_solver(solver).solve(problem)
    choice = sol.choice
    if not within(costs.cost(choice), budgets):
        raise MeasurementError(f"{solver} returned a choice over budget")  # solvers promise never to
    chosen = {m: pad[i][int(k)] for i, (m, k) in enumerate(zip(table.modules, choice))}
    return {"solver": sol.to_dict(), "budget": budgets, "cost": costs.cost(choice),
            "error_sum": float(err[np.arange(len(choice)), choice].sum()),
            "modules": {m: {**o.to_dict(), "accuracy": 1.0 - o.error,
                            "bpw": (o.total_bits / table.numel[m]) if m in table.numel else None}
                        for m, o in chosen.items()}}
