"""Runtime-format numerics on a device (issue 18): for every GGUF type and FP format, the time of
one fake-quantization of a Llama-7B-sized ``down_proj`` weight (4096 × 11008) and, on a GPU,
whether the GPU's result equals the CPU's bit for bit (the proxies run on either).

    python bench/numerics.py [--device cuda] [--rows 4096 --cols 11008] [--repeat 5]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxies.numerics import fake_quant  # noqa: E402
from search.runtime_formats import RUNTIME_FORMATS  # noqa: E402


def timed(fn, repeat: int, sync) -> float:
    fn()
    sync()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync()
    return (time.perf_counter() - t) / repeat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=11008 // 256 * 256)  # 10752: a multiple of every block
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(args.rows, args.cols, generator=g) * 0.02
    w[torch.rand(w.shape, generator=g) < 1e-3] *= 20  # outliers, as real weights have
    wd = w.to(dev)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.rows} × {args.cols} weight on {name}; torch {torch.__version__}")
    print("| format | ms per weight | GB/s of fp32 weights | equal to CPU bit for bit |")
    print("|---|---|---|---|")
    for fmt in RUNTIME_FORMATS:
        secs = timed(lambda: fake_quant(wd, fmt), args.repeat, sync)
        same = "—"
        if dev.type != "cpu":
            same = "yes" if torch.equal(fake_quant(wd, fmt).cpu().view(torch.int32),
                                        fake_quant(w, fmt).view(torch.int32)) else "NO"
        print(f"| {fmt} | {secs * 1e3:.1f} | {w.numel() * 4 / secs / 1e9:.2f} | {same} |", flush=True)


if __name__ == "__main__":
    main()
