"""``bitplan search`` end to end in a subprocess: the help, a real run that writes a policy and
prints the quality table, and bad input — always exit code 2 and exactly one line on stderr,
``bitplan: error: …``, that names the problem."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from search.policy import SCHEMA, Policy

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "COLUMNS": "200", "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
BASE = {"--model": "builtin:digits-cnn", "--budget": "avg_bits=3.3", "--proxy": "output_error", "--solver": "ilp",
        "--n-calib": "32", "--n-eval": "64"}


def bitplan(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def search_args(out_path: Path, **override: str) -> list[str]:
    opts = {**BASE, "--out": str(out_path), **{"--" + k.replace("_", "-"): v for k, v in override.items()}}
    return ["search", *[x for kv in opts.items() for x in kv]]


def test_search_help_documents_the_main_options():
    r = bitplan("search", "--help")
    assert r.returncode == 0, r.stderr
    for opt in ("--budget", "--proxy", "--solver", "--model", "--bits", "--group-size", "--out"):
        assert opt in r.stdout
    assert "avg_bits" in r.stdout and "hessian_trace" in r.stdout and "ilp" in r.stdout


def test_search_on_digits_writes_a_policy_and_prints_the_quality_table(tmp_path):
    out = tmp_path / "p.json"
    r = bitplan(*search_args(out))
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert json.loads(text)["schema"] == SCHEMA
    pol = Policy.from_json(text)
    assert pol.model.ref == "builtin:digits-cnn" and len(pol.model.sha256) == 64
    assert pol.cost["avg_bits"] <= 3.3 and pol.budget == {"avg_bits": 3.3}
    assert pol.predicted.proxy == "output_error" and pol.solver.name == "ilp"
    assert pol.measured.metric == "kl_to_float" and pol.measured.value >= 0  # KL of outputs to the float model's
    assert sorted(pol.measured.uniform) == ["2", "3", "4", "8"]
    flat = " ".join(r.stdout.split())  # rich wraps table titles to the table's width
    for words in ("Quality: kl_to_float", "float", "uniform 2-bit", "uniform 8-bit", "bitplan policy", "Cost under every budget metric"):
        assert words in flat
    assert f"{pol.measured.value:.5g}" in r.stdout
    assert "bitplan: error" not in r.stderr
    assert f"wrote the policy to {out.resolve()}" in r.stdout


BAD = [
    pytest.param({"budget": "avg_bits=1.0"}, ["avg_bits=1", "feasible range"], id="budget-below-cheapest"),
    pytest.param({"budget": "avg_bits=20"}, ["avg_bits=20", "above the float model", "feasible range"], id="budget-above-float"),
    pytest.param({"budget": "foo=3"}, ["'foo=3'", "avg_bits"], id="budget-unknown-metric"),
    pytest.param({"bits": "1,3"}, ["bits: 1 is not supported", "2..8"], id="bits-out-of-range"),
    pytest.param({"bits": "x"}, ["--bits", "'x'"], id="bits-not-integers"),
    pytest.param({"proxy": "nope"}, ["proxy 'nope'", "hessian_trace"], id="unknown-proxy"),
    pytest.param({"solver": "nope"}, ["solver 'nope'", "ilp"], id="unknown-solver"),
    pytest.param({"model": "builtin:nope"}, ["'builtin:nope'", "builtin:digits-cnn"], id="unknown-model"),
    pytest.param({"calib": "nope"}, ["'nope'"], id="unknown-calib"),
    pytest.param({"group_size": "abc"}, ["--group-size", "'abc'"], id="group-size-not-integer"),
    pytest.param({"out": "/nonexistent/dir/p.json"}, ["--out", "/nonexistent/dir"], id="out-folder-missing"),
    pytest.param({"quantizer": "awq"}, ["--quantizer", "'awq'", "gptq"], id="unknown-quantizer"),
    pytest.param({"quantizer": "gptq", "quantizer_param": "damp=2"}, ["damp must be less than or equal to 1, got 2"],
                 id="gptq-bad-damp"),
    pytest.param({"quantizer_param": "damp=0.1"}, ["quantizer 'rtn' has no parameter 'damp'; it takes no parameters"],
                 id="rtn-with-params"),
    pytest.param({"proxy": "hessian_trace", "proxy_param": "tol=abc"}, ["proxy 'hessian_trace': tol must be a number",
                                                                       "'abc'"], id="proxy-param-not-a-number"),
    pytest.param({"proxy_param": "colour=1"}, ["proxy 'output_error' has no parameter 'colour'", "max_rows"],
                 id="proxy-param-unknown"),
    pytest.param({"solver": "joint", "solver_param": "epochs=many"}, ["joint: epochs must be an integer"],
                 id="solver-param-not-an-integer"),
    pytest.param({"n_calib": "100000"}, ["calibration n_samples=100000", "at most"], id="n-calib-too-many"),
    pytest.param({"judge_samples": "-1"}, ["judge_samples must be >= 0"], id="negative-judge-samples"),
    pytest.param({"refine_seconds": "0"}, ["refine_seconds 0", "must be > 0"], id="zero-refine-seconds"),
    pytest.param({"device": "tpu"}, ["device 'tpu'", "cuda:N"], id="unknown-device"),
]
if not torch.cuda.is_available():
    BAD.append(pytest.param({"device": "cuda"}, ["device 'cuda'", "no CUDA GPU", "'cpu'"], id="device-not-here"))


@pytest.mark.parametrize("override,words", BAD)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, override, words):
    out = tmp_path / "p.json"
    r = bitplan(*search_args(out, **override))
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("bitplan: error: ")
    for w in words:
        assert w in lines[0]
    assert r.stdout == ""
    assert not out.exists()


def test_group_size_per_channel_is_what_the_help_says():
    """'per-channel', 0 and none all mean one scale per output channel (group_size null), not
    "use the default menu"; no --group-size keeps the recipe's menu."""
    from service.cli import build_parser, spec_from_args
    base = ["search", "--model", "builtin:digits-cnn", "--budget", "avg_bits=4"]
    for word in ("per-channel", "0", "none", "PC"):
        spec = spec_from_args(build_parser().parse_args(base + ["--group-size", word]))
        assert spec.group_size is None, word
    assert spec_from_args(build_parser().parse_args(base + ["--group-size", "64,per-channel"])).group_size == [64, None]
    assert spec_from_args(build_parser().parse_args(base)).group_size == [32, 64, 128]
    # bitplan submit parses it the same way (None is sent as per-channel; not given sends nothing)
    from service.cli_remote import GROUPS_NOT_GIVEN
    sub = ["submit", "--model", "builtin:digits-cnn", "--budget", "avg_bits=4"]
    assert build_parser().parse_args(sub + ["--group-size", "per-channel"]).group_size is None
    assert build_parser().parse_args(sub).group_size is GROUPS_NOT_GIVEN


def test_a_partial_policy_file_says_what_is_missing(tmp_path):
    p = tmp_path / "partial.json"
    p.write_text('{"schema": "bitplan.policy/v1"}')
    r = bitplan("export", str(p), "--format", "gptqmodel")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert "is not a complete bitplan.policy/v1 file" in r.stderr and "is missing (required)" in r.stderr
    assert "Field required" not in r.stderr and "Value error" not in r.stderr


def test_missing_arguments_are_one_line_too():
    for args in ([], ["search"], ["search", "--model", "builtin:digits-cnn"], ["frobnicate"]):
        r = bitplan(*args)
        assert r.returncode == 2
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("bitplan: error: "), r.stderr


@pytest.mark.integration
def test_minilm_end_to_end_with_a_tiny_calibration_set(tmp_path):
    out = tmp_path / "p.json"
    r = bitplan("search", "--model", "builtin:minilm-l6", "--budget", "avg_bits=3.3", "--proxy", "output_error",
                "--solver", "ilp", "--n-calib", "8", "--n-eval", "16", "--out", str(out))
    assert r.returncode == 0, r.stderr
    pol = Policy.from_json(out.read_text())
    assert pol.cost["avg_bits"] <= 3.3
    assert pol.measured.metric == "embedding_cosine_loss"
    assert 0 <= pol.measured.value <= 2 and pol.measured.float == pytest.approx(0.0, abs=1e-6)
    assert pol.measured.uniform["2"] > pol.measured.uniform["8"]
    names = [l.name for l in pol.layers] + pol.float_layers
    assert len(names) == 36 and all(n.startswith("encoder.layer.") for n in names)
    assert "Quality: embedding_cosine_loss" in " ".join(r.stdout.split())


def test_export_command(tmp_path):
    import subprocess
    import sys
    golden = Path(__file__).resolve().parents[1] / "search" / "golden"
    src = golden.parent / "test_exports.py"
    assert src.exists()
    from tests.search.test_exports import llama_policy
    pol = tmp_path / "p.json"
    pol.write_text(llama_policy(symmetric=True).to_json())
    out = tmp_path / "ct.json"
    r = subprocess.run([sys.executable, "-m", "service.cli", "export", str(pol), "--format", "compressed-tensors",
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0 and out.read_text() == (golden / "llama-compressed-tensors.json").read_text()
    r = subprocess.run([sys.executable, "-m", "service.cli", "export", str(pol), "--format", "onnx"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "unknown export format" in r.stderr
    notjson = tmp_path / "notes.txt"
    notjson.write_text("hello")
    r = subprocess.run([sys.executable, "-m", "service.cli", "export", str(notjson), "--format", "gptqmodel"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "it is not JSON" in r.stderr
