"""Every ``bitplan search`` example that a user reads — in the README and in ``bitplan search
--help`` — is checked with the real models: ``--check`` loads the model and validates every
option and budget against it (an infeasible budget in an example was a bug users hit first)."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from service.cli import EPILOG
from tests.service.test_cli import ENV, bitplan

ROOT = Path(__file__).resolve().parents[2]


def _joined(text: str) -> list[str]:
    """Lines with shell continuations (a trailing backslash) joined."""
    out, cont = [], ""
    for line in text.splitlines():
        line = cont + line.strip()
        cont = line[:-1] + " " if line.endswith("\\") else ""
        if not cont:
            out.append(line)
    return out


def documented_searches() -> list[str]:
    lines = _joined((ROOT / "README.md").read_text()) + [l.strip() for l in EPILOG.splitlines()]
    out = []
    for line in lines:
        line = line.split("  #")[0].strip()
        if re.match(r"^bitplan search --model ", line) and line not in out:
            out.append(line)
    return out


def test_the_docs_have_search_examples():
    examples = documented_searches()
    assert len(examples) >= 4
    assert any("bops=" in e for e in examples) and any("--quantizer gptq" in e for e in examples)


@pytest.fixture(scope="module")
def user_files(tmp_path_factory) -> Path:
    """What the README's own-model examples name, made the way a user makes them: ``net.pt2``
    (torch.export of a small mobile-style CNN at 3×224×224), ``photos/`` (a folder of images),
    ``my-hf-classifier/`` (an HF image classifier with its processor config) and
    ``inputs.safetensors`` (a batch of inputs)."""
    import json

    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import save_file
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    from tests.workers.test_byo import MobileCNN
    d = tmp_path_factory.mktemp("user")
    torch.manual_seed(0)
    torch.export.save(torch.export.export(MobileCNN().eval(), (torch.randn(1, 3, 224, 224),)), str(d / "net.pt2"))
    rng = np.random.default_rng(0)
    (d / "photos").mkdir()
    for i in range(80):
        Image.fromarray(rng.integers(0, 255, (60, 75, 3), dtype=np.uint8)).save(d / "photos" / f"{i}.jpg")
    MobileNetV2ForImageClassification(MobileNetV2Config(image_size=224, depth_multiplier=0.35, num_labels=10)) \
        .eval().save_pretrained(d / "my-hf-classifier")
    (d / "my-hf-classifier" / "preprocessor_config.json").write_text(json.dumps({
        "size": {"shortest_edge": 256}, "do_center_crop": True, "crop_size": {"height": 224, "width": 224},
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}))
    save_file({"inputs": torch.randn(40, 3, 224, 224)}, str(d / "inputs.safetensors"))
    return d


@pytest.mark.integration
@pytest.mark.parametrize("example", documented_searches())
def test_documented_search_example_is_valid(example, tmp_path, request):
    args = shlex.split(example)[1:]
    if "--out" in args:  # write where the test can, never into the repository
        args[args.index("--out") + 1] = str(tmp_path / "policy.json")
    cwd = ROOT
    if not args[1].startswith("builtin:"):  # a user's own files: run where they are
        cwd = request.getfixturevalue("user_files")
    r = subprocess.run([sys.executable, "-m", "service.cli", *args, "--check"], cwd=cwd, env=ENV,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{example}\n{r.stderr[-2000:]}"
    assert r.stdout.startswith("ok: "), r.stdout


def documented_submits() -> list[str]:
    lines = [l.split("  #")[0].strip() for l in (ROOT / "README.md").read_text().splitlines()]
    return list(dict.fromkeys(l for l in lines if re.match(r"^bitplan submit --model ", l)))


@pytest.mark.parametrize("example", documented_submits())
def test_documented_submit_example_parses(example):
    """The README's ``bitplan submit`` lines use options that exist, with values that parse, and
    budget points that the remote CLI can build."""
    from service.cli import build_parser
    from service.cli_remote import _budgets
    args = build_parser().parse_args(shlex.split(example)[1:])
    points = _budgets(args)
    assert points


@pytest.mark.integration
@pytest.mark.parametrize("example", [e for e in documented_submits() if "builtin:" in e])
def test_documented_submit_example_budgets_are_feasible(example):
    """Each budget point of a README submit line on a builtin model passes the same checks a
    server makes (``bitplan search --check`` with that model and budget)."""
    from service.cli import build_parser
    from service.cli_remote import _budgets
    args = build_parser().parse_args(shlex.split(example)[1:])
    points = _budgets(args)
    for point in points if isinstance(points, list) else [points]:
        budget = [x for k, v in point.items() for x in ("--budget", f"{k}={v}")]
        r = bitplan("search", "--model", args.model, *budget, "--check", timeout=600)
        assert r.returncode == 0, f"{example} at {point}\n{r.stderr[-2000:]}"


def test_the_docs_have_submit_examples():
    assert any("--sweep" in e for e in documented_submits())
