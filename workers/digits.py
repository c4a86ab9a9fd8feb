"""``builtin:digits-cnn``: a small CNN that bitplan trains itself on sklearn's digits (8×8),
deterministically, cached on disk as safetensors (no pickle). It has a plain conv, a depthwise
and a pointwise conv and two Linear layers, so every layer kind of the engine is exercised."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

VERSION = "v2"  # v2: trained on one thread (v1 weights depended on the thread count)
TRAIN, CALIB = 1200, 256  # first 1200 of a seeded permutation train; the rest is held out


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.pw = nn.Conv2d(32, 64, 1)
        self.fc1 = nn.Linear(64 * 4 * 4, 128)
        self.fc2 = nn.Linear(128, 10)
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv1(x))
        x = self.pool(self.act(self.conv2(x)))
        x = self.act(self.pw(self.act(self.dw(x))))
        return self.fc2(self.act(self.fc1(x.flatten(1))))


def cache_dir() -> Path:
    d = Path(os.environ.get("BITPLAN_CACHE", Path.home() / ".cache" / "bitplan"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images (N,1,8,8) in [0,1], labels, and the fixed permutation used for every split."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    perm = np.random.default_rng(1234).permutation(len(x))
    return x, d.target.astype(np.int64), perm


def split(role: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``train`` (1200), ``calib`` (256 of the training images), ``hessian`` (the other 944
    training images: GPTQ's Hessian data, disjoint from calib) or ``eval`` (the other 597)."""
    x, y, perm = digits_arrays()
    idx = {"train": perm[:TRAIN], "calib": perm[:CALIB], "hessian": perm[CALIB:TRAIN], "eval": perm[TRAIN:]}[role]
    return torch.from_numpy(x[idx]), torch.from_numpy(y[idx])


def train(epochs: int = 60, seed: int = 0) -> DigitsCNN:
    """Seeded, and on one thread: a multi-threaded backward sums in an order that depends on the
    thread count, so the same seed gave different weights on machines with different core counts."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(epochs, seed)
    finally:
        torch.set_num_threads(threads)


def _train(epochs: int, seed: int) -> DigitsCNN:
    torch.manual_seed(seed)
    model = DigitsCNN()
    x, y = split("train")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(128):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def load() -> DigitsCNN:
    """The cached model, trained on first use (a few seconds on 2 cores)."""
    from safetensors.torch import load_file, save_file
    path = cache_dir() / f"digits-cnn-{VERSION}.safetensors"
    model = DigitsCNN()
    if path.exists():
        model.load_state_dict(load_file(str(path)))
        return model.eval()
    model = train()
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # two processes training at once must not share a file
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(path)
    return model
