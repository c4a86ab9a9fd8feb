"""The ``bitplan`` argument parser: the local commands (``search``, ``evolve``, ``export``,
``import-measurement``) here, the server commands from service/cli_remote/. Defaults and help
texts come from their single definitions (search/defaults.py, the solver and exporter registries)."""
from __future__ import annotations

import argparse
from pathlib import Path

from search.defaults import (DEFAULT_BITS, DEFAULT_GROUP_SIZES, DEFAULT_REFINE_EVALS, DEFAULT_REFINE_PATIENCE,
                             DEFAULT_REFINE_SECONDS,
                             JUDGE_SAMPLES, RECIPES, REFERENCE_GROUP, REFINE_SECONDS)
from search.runtime_formats import RUNTIME_FORMATS
from search.targets import TARGETS
from service.cli.args import DATA_HELP, MODEL_HELP, Parser, add_data_args, bits, group, kv, names
from service.cli_remote import GROUPS_NOT_GIVEN

EPILOG = """examples:
  bitplan search --model builtin:minilm-l6 --budget avg_bits=3.3 --bits 2,3,4,8 --group-size 64 --out policy.json
  bitplan search --model builtin:digits-cnn --budget avg_bits=3.3 --budget bops=3e7 --proxy hessian_trace --solver ilp
  bitplan search --model builtin:smollm2-135m --budget avg_bits=4.3125 --tie qkv,gate_up --n-eval 8
  bitplan search --model builtin:minilm-l6 --budget avg_bits=3.3 --quantizer gptq --quantizer-param damp=0.01

your own model (torch.export.save → net.pt2) and a folder of your images (class/ subfolders optional):
  # bitplan search --model ./net.pt2 --calib images:./photos --image-size 224 \\
  #     --image-mean 0.485,0.456,0.406 --image-std 0.229,0.224,0.225 --fold-batchnorm --budget avg_bits=4

default recipe (no --proxy/--solver): measured sensitivities → exact ILP → refine judged by
measured loss on calibration-source samples held apart from the table's.
budgets: avg_bits (bits/weight incl. scales), size_bytes, bops (Σ macs·w_bits·a_bits),
latency_ms (needs --latency-table).
"""


def build_parser() -> argparse.ArgumentParser:
    from service.cli_remote import add_commands
    p = Parser(prog="bitplan", description="Mixed-precision quantization policies under real budgets.")
    sub = p.add_subparsers(dest="command", required=True)
    _add_search(sub)
    _add_tools(sub)
    add_commands(sub, bits, group, kv, add_data_args)
    return p


def _add_search(sub) -> None:
    """``bitplan search``: one flag per request field (their names: service/cli/local.py)."""
    s = sub.add_parser("search", help="find a policy for a model and budget (runs locally)", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--model", required=True, help=MODEL_HELP)
    s.add_argument("--budget", action="append", required=True, metavar="METRIC=VALUE",
                   help="avg_bits=3.3, size_bytes=…, bops=…, latency_ms=…; repeat for several (all must hold)")
    s.add_argument("--target", choices=list(TARGETS),
                   help="the runtime the policy is for: its format menu (unless --formats/--bits say otherwise), the "
                        "layers it fuses (tied), its quantizer and exporter; " + "; ".join(
                            f"{t.name}: {','.join(t.menu)}" for t in TARGETS.values()))
    s.add_argument("--formats", type=names, default=None, metavar="F1,F2,…",
                   help="an explicit menu by name: runtime formats (" + ",".join(RUNTIME_FORMATS) + "), integer "
                        "labels (w4g128s = 4-bit, groups of 128, symmetric; w8pca = per channel, asymmetric) or f16")
    s.add_argument("--bits", type=bits, default=None,
                   help=f"candidate bit-widths, 2..8, 16 = keep float (default {_listed(DEFAULT_BITS)})")
    s.add_argument("--group-size", type=group, default=GROUPS_NOT_GIVEN,
                   help="scale group size along the input dim, or 'per-channel' (also 0 or none); several (e.g. "
                        "32,64,128) give every bit-width in each group size (default: the recipe's menu "
                        f"{_listed(DEFAULT_GROUP_SIZES)}; uniform baselines use {REFERENCE_GROUP})")
    s.add_argument("--symmetric", action="store_true", default=None,
                   help="symmetric quantization (no zero points); default asymmetric")
    s.add_argument("--proxy", help="hessian_trace | fisher | orthogonality | output_error | measured")
    s.add_argument("--proxy-param", action="append", type=kv, default=[], metavar="KEY=VALUE", help="proxy parameter, e.g. tol=0.05")
    s.add_argument("--solver", help=_solver_help())
    s.add_argument("--solver-param", action="append", type=kv, default=[], metavar="KEY=VALUE",
                   help="joint solver parameter, e.g. ratios=[0,0.25,0.5] generations=20")
    s.add_argument("--quantizer", choices=["rtn", "gptq"], default="rtn",
                   help="weight quantizer that every measurement, the evaluation and the policy assume: rtn "
                        "(round to nearest, default) or gptq (error-compensating; Hessians from calibration-source "
                        "samples apart from the calibration samples)")
    s.add_argument("--quantizer-param", action="append", type=kv, default=[], metavar="KEY=VALUE",
                   help="gptq parameter: damp=0.01 (fraction of the mean Hessian diagonal), act_order=true, block_size=128, "
                        "n_samples=N (calibration-source samples for the Hessians, drawn apart from the calibration "
                        "samples; default 256 sentences / 32 windows / 512 images)")
    s.add_argument("--refine", dest="refine", action="store_true", default=None, help="refine with measured loss (default with the recipe)")
    s.add_argument("--no-refine", dest="refine", action="store_false")
    s.add_argument("--refine-evals", type=int, default=DEFAULT_REFINE_EVALS,
                   help=f"candidate policies refine may judge (default {DEFAULT_REFINE_EVALS})")
    s.add_argument("--refine-patience", type=int, default=DEFAULT_REFINE_PATIENCE, metavar="N",
                   help=f"refine also stops after N losing candidates in a row since its last accepted move "
                        f"(default {DEFAULT_REFINE_PATIENCE}; --refine-patience equal to --refine-evals judges them all)")
    s.add_argument("--refine-seconds", type=float, default=None, metavar="S",
                   help=f"wall time refine may spend; it stops at whichever of this and --refine-evals comes first "
                        f"(default " + ", ".join(f"{v:g} for a {k}" for k, v in REFINE_SECONDS.items())
                        + f", {DEFAULT_REFINE_SECONDS:g} otherwise)")
    s.add_argument("--refine-method", choices=["moves", "loop"], default=None,
                   help="moves: one-step moves judged one by one; loop: measure the cells around the policy at the "
                        "operating point, re-solve and judge, then moves with the time left (default: the recipe's, "
                        + ", ".join(f"{m} for {k}" for k, (_, m) in RECIPES.items()) + ", moves otherwise)")
    s.add_argument("--judge-samples", type=int, default=None, metavar="N",
                   help="calibration-source samples, apart from the calibration ones, that judge refine's moves "
                        "(default by model kind: " + ", ".join(f"{k} {v}" for k, v in JUDGE_SAMPLES.items())
                        + "; 0 = the calibration samples)")
    s.add_argument("--compute-dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="dtype of the measured proxy's cells and refine's judge: auto = bfloat16 where the CPU/GPU has "
                        "it natively (about twice as fast there), else float32; metrics are float32 either way")
    s.add_argument("--device", default="auto",
                   help="where the forward passes run: auto (a GPU when there is one, else the CPU), cpu, cuda, cuda:N, mps")
    s.add_argument("--offload", dest="offload", action="store_true", default=None,
                   help="stream the model's blocks through the GPU one at a time (default: only when it does not fit)")
    s.add_argument("--no-offload", dest="offload", action="store_false")
    s.add_argument("--calib", help="calibration data (default: the model's): " + DATA_HELP)
    s.add_argument("--eval", help="held-out evaluation data (same choices; default: samples of --calib apart from the "
                                  "calibration ones); never overlaps calibration")
    s.add_argument("--n-calib", type=int, help="calibration samples (sentences, token windows or images)")
    s.add_argument("--n-eval", type=int, help="evaluation samples")
    s.add_argument("--seq-len", type=int, help="tokens per sample")
    add_data_args(s)
    s.add_argument("--tie", default="", help="tie fused layers to one format: qkv, gate_up, experts (all experts of one MoE block)")
    s.add_argument("--runtime", choices=["vllm", "sglang", "none"],
                   help="the runtime the policy is for; vllm/sglang tie q/k/v, gate/up and the experts of each MoE "
                        "block (they fuse them)")
    s.add_argument("--include-embeddings", action="store_true", help="also quantize embeddings")
    s.add_argument("--include-head", action="store_true", help="also quantize the LM head")
    s.add_argument("--latency-table", type=Path, help="JSON {layer: {format label or bits: ms}} for latency_ms budgets")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", type=Path, default=Path("policy.json"),
                   help="where to write the bitplan.policy/v1 JSON (default ./policy.json; the path is printed)")
    s.add_argument("--save-table", type=Path, help="also write the sensitivity table (JSON)")
    s.add_argument("--check", action="store_true",
                   help="only check the request: load the model, validate every option and budget (printing the "
                        "feasible range of each budget metric) and stop before any calibration")


def _add_tools(sub) -> None:
    """``evolve``, ``export`` and ``import-measurement``."""
    from search.exports import EXPORTERS  # the registry names the export formats
    e = sub.add_parser("evolve", help="evolve a proxy program on a model (EMQ) and compare it with the built-in proxies")
    e.add_argument("--model", required=True)
    e.add_argument("--name", required=True, help="store the winner as evolved:<name> (letters, digits, _ . -)")
    e.add_argument("--bits", type=bits, default=list(DEFAULT_BITS))
    e.add_argument("--group-size", type=group, default=REFERENCE_GROUP)
    e.add_argument("--n-policies", type=int, default=50, help="ground-truth policies to measure (default 50)")
    e.add_argument("--population", type=int, default=32)
    e.add_argument("--generations", type=int, default=12)
    e.add_argument("--n-calib", type=int)
    e.add_argument("--compare", default="hessian_trace,fisher,orthogonality,output_error,measured",
                   help="built-in proxies to compare on the same held-out policies ('' for none)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", type=Path, help="write the comparison as JSON")
    from search.exports.base import DESCRIBES
    x = sub.add_parser("export", help="write a policy as a runtime's config, or (--model) as the quantized model files",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="formats:\n" + "\n".join(f"  {n}: {DESCRIBES[n]}" for n in sorted(EXPORTERS))
                       + "\n  gguf --model REF: a mixed GGUF file, every tensor in its planned ggml type"
                       + "\n  compressed-tensors --model REF: the quantized checkpoint directory")
    x.add_argument("policy", type=Path, help="a bitplan.policy/v1 JSON file")
    x.add_argument("--format", required=True, help=" | ".join(sorted([*EXPORTERS, "gguf"])))
    x.add_argument("--model", help="the float model the policy was found for: write the quantized files themselves "
                                   "(gguf, compressed-tensors) with the numerics bitplan measured")
    x.add_argument("--out", type=Path, help="output file or directory (default: standard output for a config)")
    x.add_argument("--float-type", choices=["f16", "bf16", "f32"], default="f16",
                   help="gguf: the type of the tensors the policy leaves in float, embedding and norms' neighbours "
                        "included (default f16, as llama.cpp; f32 reproduces an fp32 model's measurement exactly)")
    m = sub.add_parser("import-measurement", help="solve an exllamav2 measurement.json with bitplan's exact ILP")
    m.add_argument("measurement", type=Path, help="measurement.json written by exllamav2's convert.py")
    m.add_argument("--budget", action="append", default=[], metavar="METRIC=VALUE",
                   help="size_bytes=… or avg_bits=… (avg_bits needs --model); without a budget, summarise the table")
    m.add_argument("--model", help="the measured checkpoint folder (hf:<dir> or <dir>); weight counts come from its "
                                   "safetensors headers, no weights are loaded")
    m.add_argument("--out", type=Path, help="write the imported table (and the solution) as JSON")


def _solver_help() -> str:
    """The registered solvers' names (search.solvers); one that measures policies instead of
    solving a sensitivity table (the joint search) adds its class docstring's first line."""
    from search.solvers import SOLVERS
    return " | ".join(n if c.needs_table or not c.__doc__ else f"{n} ({c.__doc__.strip().splitlines()[0].rstrip('.')})"
                      for n, c in SOLVERS.items())


def _listed(values) -> str:
    return ",".join(str(v) for v in values)
