"""The command line's argument types, shared flags and its one rule for bad input: one line on
stderr, ``bitplan: error: …``, exit code 2. Standard library only, so parsing stays instant."""
from __future__ import annotations

import argparse
import json
import sys

EXIT_USAGE = 2

MODEL_HELP = ("export:<file.pt2> (torch.export.save; preferred for your own PyTorch model) | hf:<dir> (a Hugging "
              "Face folder of any task) | torchscript:<file> | a bare path (.pt2 → export, TorchScript zip → "
              "torchscript, folder with config.json → hf) | builtin:minilm-l6 | builtin:smollm2-135m | "
              "builtin:digits-cnn")
DATA_HELP = ("builtin text wikitext2-valid | wikitext2-test | tinyshakespeare | pydoc; digits (builtin images); "
             "images:DIR (a folder of images, class/ subfolders = labels) | tensors:FILE (.safetensors/.npz with "
             "'inputs', optional 'labels') | text:FILE (paragraphs) | jsonl:FILE ('text' per line) | dataset:DIR "
             "(datasets.save_to_disk; see --data-column) | file:PATH")
# the image preprocessing and dataset fields: the same flag names as the request's fields
DATA_FIELDS = ("image_size", "resize", "image_mean", "image_std", "data_column", "label_column")


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors follow the CLI's rule for every bad input: one line on
    stderr, ``bitplan: error: …``, exit code 2 (no usage block; ``--help`` shows it)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"bitplan: error: {message}\n")


def fail(message: str) -> int:
    print(f"bitplan: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def validation_line(e: dict) -> str:
    """One pydantic error as a person would say it: the field and what it must be, without the
    library's prefixes ("Value error, …", "Field required")."""
    where = ".".join(str(x) for x in e.get("loc", ()))
    kind, msg = e.get("type", ""), str(e.get("msg", "is invalid"))
    if kind == "missing":
        msg = "is missing (required)"
    elif kind == "extra_forbidden":
        msg = "is not a known field"
    else:
        msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if msg.startswith("Input should be "):
            msg = "must be " + msg.removeprefix("Input should be ")
    return f"{where}: {msg}" if where else msg


def one_line(exc: Exception) -> str:
    """The first line of an error, pydantic's said the CLI's way."""
    from pydantic import ValidationError
    if isinstance(exc, ValidationError):
        return validation_line(exc.errors(include_url=False)[0])
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def bits(text: str) -> list[int]:
    try:
        return [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated integers such as 2,3,4,8") from None


def names(text: str) -> list[str]:
    """Comma-separated format names (``q4_K,q6_K,w4g128s,f16``), checked by the spec."""
    out = [n.strip() for n in text.split(",") if n.strip()]
    if not out:
        raise argparse.ArgumentTypeError("give comma-separated format names such as q3_K,q4_K,q6_K")
    return out


def _one_group(text: str) -> int | None:
    if text.lower() in ("none", "pc", "per-channel", "0"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give an integer (32, 64, 128) or 'per-channel'") from None


def group(text: str) -> int | None | list[int | None]:
    """``64`` → 64; ``32,64,128`` → a menu of group sizes (formats are bits × group sizes)."""
    parts = [t.strip() for t in text.split(",") if t.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"{text!r}: give an integer (32, 64, 128) or 'per-channel'")
    groups = [_one_group(t) for t in parts]
    return groups[0] if len(groups) == 1 else groups


def channels(text: str) -> list[float]:
    """``0.485,0.456,0.406`` → one number per channel (1 or 3)."""
    try:
        vals = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give 1 or 3 comma-separated numbers (one per channel, [0, 1] "
                                         "pixel units), e.g. 0.485,0.456,0.406") from None
    if len(vals) not in (1, 3):
        raise argparse.ArgumentTypeError(f"{text!r}: give 1 or 3 values (one per channel), got {len(vals)}; e.g. "
                                         "0.485,0.456,0.406")
    if any(v != v or v in (float("inf"), float("-inf")) for v in vals):
        raise argparse.ArgumentTypeError(f"{text!r}: give finite numbers")
    return vals


def positive_channels(text: str) -> list[float]:
    vals = channels(text)
    if any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"{text!r}: standard deviations must be positive, e.g. 0.229,0.224,0.225")
    return vals


def pixels(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of pixels, e.g. 224") from None
    if not 8 <= n <= 8192:
        raise argparse.ArgumentTypeError(f"{text!r}: give 8..8192 pixels")
    return n


def kv(text: str) -> tuple[str, object]:
    k, sep, v = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    try:
        return k, json.loads(v)
    except ValueError:
        return k, v


def add_data_args(s, remote: bool = False) -> None:
    """Image preprocessing, dataset columns and BatchNorm folding: the same flags for ``search``
    and ``submit``."""
    s.add_argument("--image-size", type=pixels, metavar="PX",
                   help="image models: center-crop size (default: the HF processor config or the model's declared input)")
    s.add_argument("--resize", type=pixels, metavar="PX",
                   help="image models: resize the shorter side to this before the crop (default image size / 0.875)")
    s.add_argument("--image-mean", type=channels, metavar="M[,M,M]",
                   help="image models: per-channel mean in [0, 1] pixel units, e.g. 0.485,0.456,0.406 (torchvision's)")
    s.add_argument("--image-std", type=positive_channels, metavar="S[,S,S]",
                   help="image models: per-channel std in [0, 1] pixel units, e.g. 0.229,0.224,0.225")
    s.add_argument("--data-column", metavar="NAME", help="dataset:DIR sources: the input column (default image/img/"
                                                          "pixel_values/text)")
    s.add_argument("--label-column", metavar="NAME", help="dataset:DIR sources: the label column (default label/labels; "
                                                           "labels are optional)")
    s.add_argument("--fold-batchnorm", action="store_true", default=None if remote else False,
                   help="fold each BatchNorm into the conv before it before quantizing (recorded in the policy)")


def data_kwargs(args) -> dict:
    """The image/dataset fields given on the command line, for ``search`` and ``submit`` (unset
    ones left out: the request's, or the server's, defaults hold)."""
    out = {k: getattr(args, k, None) for k in DATA_FIELDS if getattr(args, k, None) is not None}
    if getattr(args, "fold_batchnorm", None):
        out["fold_batchnorm"] = True
    return out
