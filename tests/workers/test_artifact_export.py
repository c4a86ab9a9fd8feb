"""``bitplan search --target …`` then ``bitplan export --model``: the quantized files a runtime
loads give back the quality the policy reports, on the policy's own held-out data."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration
SMOL = "builtin:smollm2-135m"
# a small, fast job: fisher table, exact ILP, no refine; the policy reports KL on 4 held-out windows
# small menus of the targets' own formats (every uniform baseline is evaluated): ggml block types
# with llama.cpp's fallback on the 576-wide rows, and integer + FP8 + NVFP4 schemes for vLLM
LLAMA_MENU, VLLM_MENU = "q4_0,q5_0,q6_K,q8_0", "w4g64a,w8pcs,fp8_pc,nvfp4"
JOB = ["--proxy", "fisher", "--solver", "ilp", "--no-refine", "--n-calib", "2", "--n-eval", "4", "--seq-len", "64"]


def bitplan(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)}, timeout=900)


def held_out(target: str, budget: float):
    """The policy's evaluation batches, prepared as the search prepared them."""
    from search.spec import SearchSpec
    from workers.prepare import prepare
    menu = (LLAMA_MENU if target == "llamacpp" else VLLM_MENU).split(",")
    spec = SearchSpec(model=SMOL, budgets={"avg_bits": budget}, target=target, format_names=menu, proxy="fisher",
                      solver="ilp", refine=False, n_calib=2, n_eval=4, seq_len=64)
    return prepare(spec)


@pytest.fixture(scope="module")
def llamacpp_policy(tmp_path_factory):
    d = tmp_path_factory.mktemp("gguf")
    r = bitplan("search", "--model", SMOL, "--target", "llamacpp", "--formats", LLAMA_MENU, "--budget", "avg_bits=5.0", *JOB,
                "--out", str(d / "policy.json"), cwd=d)
    assert r.returncode == 0, r.stderr[-2000:]
    return d, json.loads((d / "policy.json").read_text())


def test_the_gguf_file_gives_back_the_kl_the_policy_reports(llamacpp_policy):
    from transformers import AutoModelForCausalLM
    d, policy = llamacpp_policy
    types = {l.get("stored_as") or l["runtime"] for l in policy["layers"]}
    assert len(types) > 1 and all(l["runtime"] for l in policy["layers"])  # a mix of ggml types
    r = bitplan("export", "policy.json", "--format", "gguf", "--model", SMOL, "--out", "model.gguf",
                "--float-type", "f32", cwd=d)
    assert r.returncode == 0, r.stderr[-2000:]
    p = held_out("llamacpp", 5.0)
    loaded = AutoModelForCausalLM.from_pretrained(str(d), gguf_file="model.gguf", dtype=torch.float32).eval()
    got = p.lm.task.evaluate(loaded, p.evals)["kl_to_float"]
    want = policy["measured"]["value"]
    assert got == pytest.approx(want, rel=1e-4, abs=1e-6), (got, want)
    # every planned tensor decodes to what the search quantized, bit for bit
    from proxies.quant import rtn, to_2d
    from search.policy import Policy
    ours = dict(p.lm.model.named_modules())
    theirs = dict(loaded.named_modules())
    for name, fmt in Policy.model_validate(policy).assignment().items():
        if name.endswith(("q_proj", "k_proj")):
            continue  # rows reordered for llama.cpp's rotary layout and back: the values are compared via the KL
        assert torch.equal(to_2d(theirs[name]), rtn(to_2d(ours[name]).detach(), fmt)), name


def test_the_gguf_export_refuses_what_it_cannot_write(llamacpp_policy, tmp_path):
    d, policy = llamacpp_policy
    r = bitplan("export", str(d / "policy.json"), "--format", "gguf", "--out", "m.gguf", cwd=tmp_path)
    assert r.returncode == 2 and "give --model" in r.stderr
    r = bitplan("export", str(d / "policy.json"), "--format", "llamacpp", "--model", SMOL, "--out", "x", cwd=tmp_path)
    assert r.returncode == 2 and "is a config" in r.stderr
    r = bitplan("export", str(d / "policy.json"), "--format", "compressed-tensors", "--out", "x.json", cwd=tmp_path)
    assert r.returncode == 2 and "cannot express" in r.stderr  # ggml types are no compressed-tensors scheme
    tensor_types = bitplan("export", str(d / "policy.json"), "--format", "llamacpp", cwd=tmp_path)
    assert tensor_types.returncode == 0
    assert all(f"={l['runtime']}" in tensor_types.stdout for l in policy["layers"])


def test_the_compressed_tensors_checkpoint_gives_back_the_kl_the_policy_reports(tmp_path):
    from workers.artifacts.ct_checkpoint import load_with_transformers
    r = bitplan("search", "--model", SMOL, "--target", "vllm", "--formats", VLLM_MENU, "--budget", "avg_bits=5.5", *JOB,
                "--out", "policy.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    policy = json.loads((tmp_path / "policy.json").read_text())
    r = bitplan("export", "policy.json", "--format", "compressed-tensors", "--model", SMOL, "--out", "ckpt",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "compressed-tensors"
    p = held_out("vllm", 5.5)
    loaded = load_with_transformers(tmp_path / "ckpt", dtype=torch.float32)
    # compressed-tensors decodes NVFP4 into bfloat16 (vLLM's kernels keep the exact products):
    # those layers equal bitplan's weights rounded to bf16, every other layer is bit-exact
    from proxies.quant import rtn, to_2d
    from search.policy import Policy
    ours, theirs = dict(p.lm.model.named_modules()), dict(loaded.named_modules())
    assignment = Policy.model_validate(policy).assignment()
    assert {f.label for f in assignment.values()} >= {"nvfp4", "w4g64a"}
    for name, fmt in assignment.items():
        want = rtn(to_2d(ours[name]).detach(), fmt)
        if fmt.runtime == "nvfp4":
            assert torch.equal(theirs[name].weight, want.to(torch.bfloat16)), name
        else:
            assert torch.equal(theirs[name].weight, want), name
    for m in theirs.values():  # the bf16-decoded layers compute in fp32 like the rest
        if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dtype == torch.bfloat16:
            m.weight.data = m.weight.data.float()
    got = p.lm.task.evaluate(loaded, p.evals)["kl_to_float"]
    assert got == pytest.approx(policy["measured"]["value"], rel=0.02)
