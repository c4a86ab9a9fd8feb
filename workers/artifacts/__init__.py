"""Quantized model files a runtime loads (a mixed GGUF, a compressed-tensors checkpoint), written
from a policy and the float model with the same numerics the search measured."""
from __future__ import annotations

from pathlib import Path

# export format → what ``bitplan export --format F --model REF --out PATH`` writes
ARTIFACTS = {
    "gguf": "artifact: a mixed-precision GGUF file (every tensor in its planned ggml type) that llama.cpp and "
            "transformers' GGUF loader load",
    "compressed-tensors": "artifact: a quantized compressed-tensors checkpoint directory (packed weights, scales, "
                          "zero points, quantization_config) that transformers and vLLM load",
}


class ArtifactError(ValueError):
    """The artifact cannot be written for this policy and model; the message says what to change."""


def write_artifact(policy, fmt: str, model_ref: str, out: Path, float_type: str = "f16") -> dict:
    """Quantize the float model ``model_ref`` as ``policy`` says, with the numerics its
    measurements used, and write the file(s) a runtime loads. Returns the writer's summary."""
    from search.exports.base import check_ties
    from workers.sources import load_model
    if fmt not in ARTIFACTS:
        raise ArtifactError(f"--model writes the quantized files for {' or '.join(ARTIFACTS)}, not {fmt!r}; "
                            "other formats are configs (leave out --model)")
    if policy.sparsity:
        raise ArtifactError(f"the policy prunes {len(policy.sparsity)} layer(s); prune the model first, then export a "
                            "quantization-only policy")
    if policy.quantizer.method != "rtn":
        raise ArtifactError(f"the policy was measured under {policy.quantizer.method}, whose weights need its "
                            "calibration pass: export its config instead (e.g. --format llmcompressor-recipe)")
    lm = load_model(model_ref)
    if policy.model.sha256 and lm.sha256 != policy.model.sha256:
        raise ArtifactError(f"{model_ref} is not the model the policy was found for (weights sha256 {lm.sha256[:12]}…, "
                            f"the policy's {policy.model.sha256[:12]}…)")
    assignment = policy.assignment()
    modules = dict(lm.model.named_modules())
    missing = [n for n in list(assignment) + list(policy.float_layers) if n not in modules]
    if missing:
        raise ArtifactError(f"{model_ref} has no module {missing[0]!r} (of {len(missing)} the policy names)")
    if fmt == "compressed-tensors":
        from workers.artifacts.ct_checkpoint import write_compressed_tensors
        check_ties(policy)
        out.mkdir(parents=True, exist_ok=True)
        return write_compressed_tensors(lm.model, lm.tokenizer, assignment, out_dir=out, hf_dir=lm.info.get("hf_dir"))
    return write_policy_gguf(lm, assignment, list(policy.float_layers), out, float_type)


def gguf_types(assignment: dict, float_layers: list[str], modules: dict, float_type: str = "f16") -> dict[str, str]:
    """HF module → the ggml type its rows are really stored in (llama.cpp's fallback where the
    planned type's block does not divide a row); everything the policy leaves in float, the
    embedding and norms included, in ``float_type``."""
    out = {}
    for name, fmt in assignment.items():
        if not fmt.runtime:
            raise ArtifactError(f"{name} is in {fmt.label}, bitplan's integer grid, which GGUF does not store: plan "
                                "with --target llamacpp (ggml types), or export --format llamacpp for llama-quantize")
        stored = fmt.stored_as(modules[name].weight.shape[-1])
        out[name] = float_type if stored.is_float else stored.runtime
    for name in float_layers:
        out[name] = float_type
    out.setdefault("model.embed_tokens", float_type)
    return out


def bitplan_encode(w2d, type_name: str):
    """Pack one weight in a ggml type with bitplan's own numerics (the ones the search measured)."""
    from proxies.numerics import fp_quants, gguf_quants
    from search.runtime_formats import get
    if get(type_name).family == "fp":
        q = fp_quants.quantize(w2d, type_name)
        packed = fp_quants.gguf_pack(q)
        return (packed, fp_quants.gguf_tensor_scale(q)) if type_name == "nvfp4" else packed
    return gguf_quants.pack(gguf_quants.quantize(w2d, type_name))


def write_policy_gguf(lm, assignment: dict, float_layers: list[str], out: Path, float_type: str = "f16") -> dict:
    from workers.artifacts.gguf_file import write_gguf
    if type(lm.model).__name__ != "LlamaForCausalLM":
        raise ArtifactError(f"GGUF export writes Llama-architecture causal LMs; {lm.ref} is {type(lm.model).__name__}")
    if float_type not in ("f16", "f32", "bf16"):
        raise ArtifactError(f"float type {float_type!r}: use f16, bf16 or f32")
    types = gguf_types(assignment, float_layers, dict(lm.model.named_modules()), float_type)
    return write_gguf(lm.model, lm.tokenizer, types, out, bitplan_encode)
