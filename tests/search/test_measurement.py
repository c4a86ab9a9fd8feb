"""exllamav2 measurement.json import: parsing the converter's layout (module keys, option
records with per-sub-layer QParams, null entries), error = 1 − accuracy, weight counts from
safetensors headers, the exact solve against brute force, and the CLI with its bad inputs."""
from __future__ import annotations

import itertools
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from search.measurement import (MeasurementError, attach_numel, load_measurement, parse_measurement,
                                safetensors_numel, solve_measurement)

ROOT = Path(__file__).resolve().parents[2]


def qp(bits, prop, gs=64, scale_bits=4) -> dict:
    return {"group_size": {str(b): gs for b in bits}, "bits": bits, "bits_prop": prop, "scale_bits": scale_bits}


def measurement(n_layers=3, seed=0) -> dict:
    """The converter's layout: attention and MLP option lists per layer, null for norms/head."""
    rng = np.random.default_rng(seed)
    m: dict = {}
    for i in range(n_layers):
        attn = []
        for bits, prop in (([2], [1.0]), ([3, 2], [0.05, 0.95]), ([4], [1.0]), ([6, 4], [0.1, 0.9]), ([8], [1.0])):
            bpw = sum(b * p for b, p in zip(bits, prop))
            attn.append({"accuracy": float(1 - rng.uniform(0.5, 1.5) * 2 ** (-1.5 * bpw)),
                         "total_bits": int(4 * 64 * 64 * (bpw + 0.1)),
                         **{k: qp(bits, prop) for k in ("q_proj", "k_proj", "v_proj", "o_proj")}})
        mlp = []
        for bits, prop in (([2], [1.0]), ([3], [1.0]), ([4], [1.0]), ([5], [1.0])):
            mlp.append({"accuracy": float(1 - rng.uniform(0.5, 1.5) * 2 ** (-1.5 * bits[0])),
                        "total_bits": int(3 * 64 * 128 * (bits[0] + 0.1)),
                        **{k: qp(bits, prop) for k in ("gate_proj", "up_proj", "down_proj")}})
        m[f"model.layers.{i}.self_attn"] = attn
        m[f"model.layers.{i}.mlp"] = mlp
    m["model.norm.norm"] = None
    m["lm_head.linear"] = None
    return {"measurement": m, "last_module_idx": 4 * n_layers + 2}


def write_safetensors(path: Path, shapes: dict[str, list[int]]) -> None:
    """A header-only-valid safetensors file: the header names shapes; data bytes follow (zeros)."""
    header, off = {}, 0
    for name, shape in shapes.items():
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "F16", "shape": shape, "data_offsets": [off, off + n]}
        off += n
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"\0" * off)


def llama_shapes(n_layers=3) -> dict[str, list[int]]:
    s = {"model.embed_tokens.weight": [100, 64], "lm_head.weight": [100, 64], "model.norm.weight": [64]}
    for i in range(n_layers):
        p = f"model.layers.{i}"
        s.update({f"{p}.self_attn.{k}.weight": [64, 64] for k in ("q_proj", "k_proj", "v_proj", "o_proj")})
        s.update({f"{p}.mlp.gate_proj.weight": [128, 64], f"{p}.mlp.up_proj.weight": [128, 64],
                  f"{p}.mlp.down_proj.weight": [64, 128], f"{p}.input_layernorm.weight": [64]})
    return s


def test_parse_reads_modules_options_and_error_as_one_minus_accuracy():
    data = measurement()
    t = parse_measurement(data)
    assert t.modules == [f"model.layers.{i}.{k}" for i in range(3) for k in ("self_attn", "mlp")]
    assert [len(o) for o in t.options] == [5, 4] * 3
    rec = data["measurement"]["model.layers.1.self_attn"][1]
    opt = t.options[2][1]
    assert opt.error == pytest.approx(1 - rec["accuracy"]) and opt.total_bits == rec["total_bits"]
    assert opt.desc == "q_proj/k_proj/v_proj/o_proj 0.05:3b_64g/0.95:2b_64g s4"


def test_weight_counts_come_from_safetensors_headers(tmp_path):
    write_safetensors(tmp_path / "model.safetensors", llama_shapes())
    tensors = safetensors_numel(tmp_path)
    assert tensors["model.layers.0.mlp.down_proj.weight"] == 64 * 128
    t = parse_measurement(measurement())
    attach_numel(t, tensors)
    assert t.numel["model.layers.0.self_attn"] == 4 * 64 * 64  # norms are not counted
    assert t.numel["model.layers.2.mlp"] == 3 * 64 * 128


@pytest.mark.parametrize("frac", [0.3, 0.5, 0.8])
def test_ilp_equals_brute_force_and_keeps_the_budget(tmp_path, frac):
    t = parse_measurement(measurement(n_layers=2, seed=int(frac * 10)))
    bits = [[o.total_bits for o in opts] for opts in t.options]
    lo, hi = sum(min(b) for b in bits), sum(max(b) for b in bits)
    limit = (lo + frac * (hi - lo)) / 8
    res = solve_measurement(t, {"size_bytes": limit})
    best = min((sum(o.error for o in combo), combo) for combo in itertools.product(*t.options)
               if sum(o.total_bits for o in combo) / 8 <= limit)[0]
    assert res["error_sum"] == pytest.approx(best, rel=1e-9)
    assert res["cost"]["size_bytes"] <= limit
    assert res["solver"]["gap"] is not None and res["solver"]["gap"] <= 1e-6


def test_avg_bits_budget_with_the_checkpoint(tmp_path):
    write_safetensors(tmp_path / "model.safetensors", llama_shapes())
    t = parse_measurement(measurement())
    attach_numel(t, safetensors_numel(tmp_path))
    res = solve_measurement(t, {"avg_bits": 4.0})
    assert res["cost"]["avg_bits"] <= 4.0
    assert all(m["bpw"] is not None for m in res["modules"].values())
    # more bits never make the summed error worse
    assert solve_measurement(t, {"avg_bits": 6.0})["error_sum"] <= res["error_sum"]


@pytest.mark.parametrize("data,words", [
    ([1, 2], "top-level 'measurement'"),
    ({"measurement": {"a": None}}, "no measured modules"),
    ({"measurement": {"m": []}}, "non-empty list"),
    ({"measurement": {"m": [{"accuracy": 0.9}]}}, "'accuracy' and 'total_bits'"),
    ({"measurement": {"m": [{"accuracy": 1.5, "total_bits": 10}]}}, "accuracy must be in (0, 1]"),
    ({"measurement": {"m": [{"accuracy": 0.5, "total_bits": -1}]}}, "total_bits must be a positive"),
])
def test_bad_documents_say_what_to_fix(data, words):
    with pytest.raises(MeasurementError, match=words.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        parse_measurement(data)


def test_avg_bits_without_shapes_and_an_impossible_budget_are_refused():
    t = parse_measurement(measurement())
    with pytest.raises(MeasurementError, match="avg_bits needs the model's shapes"):
        solve_measurement(t, {"avg_bits": 4.0})
    with pytest.raises(MeasurementError, match="below the cheapest option set; feasible range"):
        solve_measurement(t, {"size_bytes": 10.0})


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service.cli", "import-measurement", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cli_imports_solves_and_writes(tmp_path):
    f = tmp_path / "measurement.json"
    f.write_text(json.dumps(measurement()))
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    write_safetensors(ckpt / "model.safetensors", llama_shapes())
    out = tmp_path / "solution.json"
    r = run_cli(str(f), "--model", str(ckpt), "--budget", "avg_bits=4.5", "--out", str(out))
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert doc["table"]["schema"] == "bitplan.measurement/v1" and len(doc["table"]["modules"]) == 6
    assert doc["solution"]["cost"]["avg_bits"] <= 4.5
    assert "model.layers.0.self_attn" in r.stdout and "Σ(1 − accuracy)" in r.stdout
    r = run_cli(str(f))  # no budget: the table summary only
    assert r.returncode == 0 and "6 modules" in r.stdout


@pytest.mark.parametrize("setup,args,words", [
    ("missing", [], "No such file"),
    ("notjson", [], "not JSON"),
    ("good", ["--budget", "avg_bits=4"], "avg_bits needs the model's shapes"),
    ("good", ["--budget", "size_bytes=1"], "feasible range"),
    ("good", ["--budget", "nope"], "METRIC=VALUE"),
])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, setup, args, words):
    f = tmp_path / "m.json"
    if setup == "notjson":
        f.write_text("{oops")
    elif setup == "good":
        f.write_text(json.dumps(measurement()))
    r = run_cli(str(f), *args)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bitplan: error: ") and words in lines[0], r.stderr
