"""Sample sets for models that do not read plain text: a folder of images (``images:DIR``), a
tensor file (``tensors:FILE``), a Hugging Face dataset saved to disk (``dataset:DIR``), and the
image preprocessing that turns a picture into a model input (``ImagePrep``).

A sample set is indexed: ``len(s)`` samples, ``s.labels`` (class indices, or None), and
``s.inputs(indices, prep)`` returns only the picked samples (a folder of thousands of photos
is listed, never decoded whole). Every way the data can be wrong raises ``DataError`` naming
the file or column and the fix."""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from workers.data import DataError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
SAMPLE_PREFIXES = ("images:", "tensors:", "dataset:")
CROP_FRACTION = 0.875  # resize = round(size / 0.875): the usual ImageNet evaluation recipe (256 → 224)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")
# PIL's resampling filters by name; HF processor configs give PIL's integer codes
_HF_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}
IMAGE_COLUMNS = ("image", "img", "pixel_values", "images")
TEXT_COLUMNS = ("text", "sentence", "content", "document")
LABEL_COLUMNS = ("label", "labels")


def _pil():
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow ships with the engine extra
        raise DataError("image data needs Pillow: pip install pillow") from None
    return Image


# ---------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class ImagePrep:
    """Picture → model input, torchvision's evaluation recipe: resize (the shorter side to
    ``resize``, or to exactly ``resize`` = (h, w)), center-crop ``size`` = (h, w), pixels to
    [0, 1], then (x − mean) / std per channel."""

    size: tuple[int, int]
    resize: int | tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels: int = 3
    interpolation: str = "bilinear"
    source: str = ""  # where the settings came from, for the policy ("user", "hf processor", ...)

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise DataError(f"images can feed 1 or 3 input channels, not {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise DataError(f"image mean/std need {self.channels} value(s) for a {self.channels}-channel input, "
                            f"got {len(self.mean)}/{len(self.std)}")
        if any(not s > 0 for s in self.std):
            raise DataError("image std values must be positive")
        if self.interpolation not in INTERPOLATIONS:
            raise DataError(f"unknown interpolation {self.interpolation!r}: use one of {', '.join(INTERPOLATIONS)}")
        lo = min(self.resize) if isinstance(self.resize, tuple) else self.resize
        if lo < 1 or min(self.size) < 1:
            raise DataError("image sizes must be positive")
        if isinstance(self.resize, int) and self.resize < min(self.size):
            raise DataError(f"resize {self.resize} is smaller than the crop {self.size[0]}×{self.size[1]}: "
                            "the shorter side must be at least the image size")
        if isinstance(self.resize, tuple) and (self.resize[0] < self.size[0] or self.resize[1] < self.size[1]):
            raise DataError(f"resize {self.resize} is smaller than the crop {self.size}")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, *self.size)

    def to_dict(self) -> dict:
        sq = lambda t: t[0] if isinstance(t, tuple) and t[0] == t[1] else (list(t) if isinstance(t, tuple) else t)
        return {"size": sq(self.size), "resize": self.resize if isinstance(self.resize, int) else list(self.resize),
                "resize_mode": "shorter_side" if isinstance(self.resize, int) else "exact",
                "mean": list(self.mean), "std": list(self.std), "channels": self.channels,
                "interpolation": self.interpolation, "pixel_range": "[0, 1] before normalization",
                "source": self.source}

    def __call__(self, img, where: str = "image") -> torch.Tensor:
        """One PIL image → a float tensor (channels, h, w)."""
        Image = _pil()
        img = img.convert("L" if self.channels == 1 else "RGB")
        w, h = img.size
        if isinstance(self.resize, int):
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = self.resize, int(self.resize * long / short)  # torchvision's rounding
            nw, nh = (new_short, new_long) if w <= h else (new_long, new_short)
        else:
            nh, nw = self.resize
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), getattr(Image.Resampling, self.interpolation.upper()))
        ch, cw = self.size
        if nh < ch or nw < cw:
            raise DataError(f"{where}: {w}×{h} resized to {nw}×{nh} is smaller than the {cw}×{ch} crop")
        top, left = int(round((nh - ch) / 2.0)), int(round((nw - cw) / 2.0))  # torchvision's center_crop
        img = img.crop((left, top, left + cw, top + ch))
        a = np.asarray(img, dtype=np.uint8)
        a = a[:, :, None] if a.ndim == 2 else a
        x = torch.from_numpy(a.astype(np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(self.std, dtype=torch.float32)[:, None, None]
        return ((x - mean) / std).contiguous()


def _pair(v, what: str) -> tuple[int, int] | None:
    if v is None:
        return None
    if isinstance(v, int):
        return (v, v)
    if isinstance(v, dict):
        if "height" in v and "width" in v:
            return (int(v["height"]), int(v["width"]))
        if "shortest_edge" in v:
            return (int(v["shortest_edge"]),) * 2
    if isinstance(v, (list, tuple)) and len(v) == 2:
        return (int(v[0]), int(v[1]))
    raise DataError(f"cannot read {what} {v!r} from the image processor config")


def hf_image_prep(cfg: dict) -> dict | None:
    """The preprocessing an HF image processor config (``preprocessor_config.json``) describes,
    as ``{"size", "resize", "mean", "std", "interpolation"}`` for ``resolve_prep``; None when the
    config says nothing about images. Covers the common processors: ViT-style (resize to exactly
    height×width), ResNet/ConvNeXt-style (shortest edge / crop_pct, then crop) and
    MobileNet/EfficientNet-style (shortest edge, then crop_size)."""
    if not cfg or not any(k in cfg for k in ("size", "crop_size", "image_mean")):
        return None
    out: dict = {}
    size, crop = cfg.get("size"), cfg.get("crop_size")
    do_resize, do_crop = cfg.get("do_resize", True), cfg.get("do_center_crop", crop is not None)
    if isinstance(size, dict) and "shortest_edge" in size and "crop_pct" in cfg and size["shortest_edge"] < 384:
        se = int(size["shortest_edge"])  # ConvNeXt: resize to se / crop_pct, crop se
        out.update(size=(se, se), resize=int(se / float(cfg["crop_pct"] or 1.0)))
    elif isinstance(size, dict) and "shortest_edge" in size and "crop_pct" in cfg:
        se = int(size["shortest_edge"])  # ConvNeXt at ≥ 384: warp to se × se, no crop
        out.update(size=(se, se), resize=(se, se))
    elif isinstance(size, dict) and "shortest_edge" in size:
        se = int(size["shortest_edge"])
        c = _pair(crop, "crop_size") if do_crop and crop is not None else (se, se)
        out.update(size=c, resize=se if do_resize else max(c))
    elif size is not None:
        hw = _pair(size, "size")
        c = _pair(crop, "crop_size") if do_crop and crop is not None else hw
        out.update(size=c, resize=hw if do_resize else c)
    elif crop is not None:
        c = _pair(crop, "crop_size")
        out.update(size=c, resize=round(max(c) / CROP_FRACTION))
    if cfg.get("do_normalize", True) and cfg.get("image_mean") is not None and cfg.get("image_std") is not None:
        mean, std = cfg["image_mean"], cfg["image_std"]
        out.update(mean=[float(mean)] if isinstance(mean, (int, float)) else [float(m) for m in mean],
                   std=[float(std)] if isinstance(std, (int, float)) else [float(s) for s in std])
    elif not cfg.get("do_normalize", True):
        out.update(mean=[0.0], std=[1.0])
    if cfg.get("resample") in _HF_RESAMPLE:
        out["interpolation"] = _HF_RESAMPLE[cfg["resample"]]
    if cfg.get("do_rescale", True) is False:
        raise DataError("the image processor does not rescale pixels to [0, 1] (do_rescale false); bitplan feeds "
                        "[0, 1] pixels: give --image-mean/--image-std in those units")
    return out or None


def resolve_prep(image_size: int | None = None, resize: int | None = None, image_mean: list[float] | None = None,
                 image_std: list[float] | None = None, model_prep: dict | None = None,
                 input_shape: tuple[int, ...] | None = None) -> ImagePrep:
    """The preprocessing of a job: each setting from the user (spec fields) first, else from the
    model's HF processor config (``model_prep``, as ``hf_image_prep`` returns it), else from the
    model's declared per-sample input shape (C, H, W): crop H×W after resizing the shorter side
    to round(max(H, W)/0.875), mean 0 and std 1 (pixels fed in [0, 1]). Raises DataError when
    nothing gives a size."""
    model_prep = model_prep or {}
    channels = 3
    if input_shape is not None and len(input_shape) == 3 and input_shape[0] in (1, 3):
        channels = int(input_shape[0])
    elif input_shape is not None and len(input_shape) == 3:
        raise DataError(f"the model takes {input_shape[0]}-channel input {tuple(input_shape)}: images give 1 "
                        "(grayscale) or 3 (RGB) channels; use tensors:FILE data for this model")
    elif model_prep.get("channels") in (1, 3):
        channels = int(model_prep["channels"])
    where: list[str] = []
    if image_size is not None:
        size = (int(image_size), int(image_size))
        rs: int | tuple[int, int] = int(resize) if resize is not None else round(image_size / CROP_FRACTION)
        where.append("size: user")
    elif model_prep.get("size") is not None:
        size = _pair(model_prep["size"], "size")
        rs = int(resize) if resize is not None else model_prep.get("resize") or round(max(size) / CROP_FRACTION)
        rs = tuple(rs) if isinstance(rs, list) else rs
        where.append("size: hf processor" + (", resize: user" if resize is not None else ""))
    elif input_shape is not None and len(input_shape) == 3:
        size = (int(input_shape[1]), int(input_shape[2]))
        rs = int(resize) if resize is not None else round(max(size) / CROP_FRACTION)
        where.append("size: model input shape" + (", resize: user" if resize is not None else ""))
    else:
        raise DataError("images need a size and nothing gives one (no --image-size, no image processor config, no "
                        "declared input shape): give --image-size, e.g. --image-size 224")

    def stat(user, key, default):
        if user is not None:
            where.append(f"{key}: user")
            v = [float(x) for x in user]
        elif model_prep.get(key) is not None:
            where.append(f"{key}: hf processor")
            v = [float(x) for x in model_prep[key]]
        else:
            where.append(f"{key}: {default} (none given)")
            v = [default]
        if len(v) == 1:
            v = v * channels
        if len(v) != channels:
            raise DataError(f"image_{key} has {len(v)} values but the model takes {channels}-channel input: give "
                            f"{channels} value(s)")
        return tuple(v)

    mean, std = stat(image_mean, "mean", 0.0), stat(image_std, "std", 1.0)
    return ImagePrep(size, rs, mean, std, channels, model_prep.get("interpolation", "bilinear"), "; ".join(where))


# ---------------------------------------------------------------- sample sets


def _label_ids(values: list, where: str, class_to_idx: dict | None = None) -> tuple[np.ndarray | None, list[str]]:
    """Class indices for raw label values (ints kept; strings mapped through the model's
    ``class_to_idx`` when every one is in it, else by sorted name); notes on what was done."""
    notes: list[str] = []
    if not len(values):
        return None, notes
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        a = np.asarray(values, dtype=np.int64)
        if (a < 0).any():
            return None, [f"{where}: labels include negative values (unlabeled rows): accuracy is not reported"]
        return a, notes
    if all(isinstance(v, str) for v in values):
        names = sorted(set(values))
        if class_to_idx and all(n in class_to_idx for n in names):
            notes.append(f"{where}: label names mapped to the model's own class indices")
            return np.asarray([class_to_idx[v] for v in values], dtype=np.int64), notes
        idx = {n: i for i, n in enumerate(names)}
        notes.append(f"{where}: label names mapped to indices in sorted order ({', '.join(names[:5])}"
                     f"{', …' if len(names) > 5 else ''})")
        return np.asarray([idx[v] for v in values], dtype=np.int64), notes
    raise DataError(f"{where}: labels must be class indices (integers) or class names (strings)")


class SampleSet(ABC):
    """An indexed set of samples; ``modality`` is "image", "tensor" or "text"."""

    source: str = ""
    modality: str = ""
    unit: str = "samples"
    labels: np.ndarray | None = None
    classes: list[str] | None = None

    def __init__(self) -> None:
        self.notes: list[str] = []

    @abstractmethod
    def __len__(self) -> int:
        ...

    @abstractmethod
    def inputs(self, idx: np.ndarray, prep: ImagePrep | None = None):
        """The picked samples: a tensor (n, *sample_shape), or a list of strings for text."""

    def sample_shape(self, prep: ImagePrep | None = None) -> tuple[int, ...] | None:
        return prep.input_shape if self.modality == "image" and prep is not None else None


class ImageFolder(SampleSet):
    """``images:DIR``: image files directly in DIR (unlabeled), or in class subfolders
    DIR/<class>/ (labels: the model's own class index when its config names every folder,
    the folder's number when all folder names are integers, else sorted folder-name order).
    Files are listed, and only the picked ones decoded."""

    modality, unit = "image", "images"

    def __init__(self, source: str, path: Path, class_to_idx: dict | None = None) -> None:
        super().__init__()
        self.source, self.path = source, path
        if not path.is_dir():
            raise DataError(f"{source}: {str(path)!r} is not a folder")
        is_img = lambda p: p.suffix.lower() in IMAGE_EXTS and p.is_file() and not p.name.startswith(".")
        top = sorted(p for p in path.iterdir() if is_img(p))
        dirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
        if top and dirs and any(any(is_img(f) for f in d.iterdir()) for d in dirs):
            raise DataError(f"{source}: {str(path)!r} has images both directly inside and in subfolders: put every "
                            "image in a class subfolder (labeled) or all directly in the folder (unlabeled)")
        if top:
            self.files, self.labels = top, None
        else:
            files, labels, names = [], [], []
            for d in dirs:
                imgs = sorted(f for f in d.rglob("*") if is_img(f))
                if imgs:
                    names.append(d.name)
                    files += imgs
                    labels += [d.name] * len(imgs)
            self.files, self.classes = files, names
            if names:
                if class_to_idx and all(n in class_to_idx for n in names):
                    ids = {n: int(class_to_idx[n]) for n in names}
                    self.notes.append(f"{source}: class folders mapped to the model's own class indices")
                elif all(n.isdigit() for n in names):
                    ids = {n: int(n) for n in names}
                    self.notes.append(f"{source}: class folders are numbers: each folder's number is its label")
                else:
                    ids = {n: i for i, n in enumerate(names)}
                    self.notes.append(f"{source}: {len(names)} class folders labeled 0..{len(names) - 1} in sorted "
                                      "name order")
                self.labels = np.asarray([ids[n] for n in labels], dtype=np.int64)
        if not self.files:
            raise DataError(f"{source}: no images in {str(path)!r} (looked for {', '.join(IMAGE_EXTS)} files, directly "
                            "inside or in class subfolders)")
        _check_headers(source, self.files)

    def __len__(self) -> int:
        return len(self.files)

    def inputs(self, idx, prep=None):
        if prep is None:
            raise DataError(f"{self.source}: images need preprocessing settings (give --image-size)")
        return torch.stack([decode_image(self.files[int(i)], prep) for i in idx]) if len(idx) else \
            torch.zeros((0, *prep.input_shape))


def _check_headers(source: str, files: list[Path]) -> None:
    """Every file must at least open as an image (PIL reads the header only: about a
    millisecond each), so a broken file is named before any work, not when a pick reaches it."""
    Image = _pil()
    bad = []
    for f in files:
        try:
            with Image.open(f):
                pass
        except Exception:  # noqa: BLE001 - UnidentifiedImageError, OSError, DecompressionBombError ...
            bad.append(f.name)
            if len(bad) == 3:
                break
    if bad:
        raise DataError(f"{source}: {', '.join(bad)} {'is not an image' if len(bad) == 1 else 'are not images'} that "
                        "Pillow can read: remove or replace them")


def decode_image(path: Path, prep: ImagePrep) -> torch.Tensor:
    Image = _pil()
    try:
        with Image.open(path) as img:
            img.load()
            return prep(img, str(path))
    except DataError:
        raise
    except Exception as e:  # PIL raises many types (UnidentifiedImageError, OSError, DecompressionBombError, ...)
        raise DataError(f"image {str(path)!r} does not decode ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}): "
                        "remove or replace the file") from None


@lru_cache(maxsize=4)
def _tensor_file(path: str, mtime_ns: int, size: int) -> dict[str, np.ndarray]:
    p = Path(path)
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file
            return {k: (v.float() if v.dtype == torch.bfloat16 else v).numpy() for k, v in load_file(path).items()}
        if p.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
    except Exception as e:  # a corrupt file, a pickled member, a dtype numpy cannot hold, ...
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"tensors:{path} cannot be read as {p.suffix} ({first}); save it with safetensors.torch.save_file "
                        "or numpy.savez (no pickled objects)") from None
    raise DataError(f"tensors:{path}: use a .safetensors or .npz file")


class TensorFile(SampleSet):
    """``tensors:FILE``: a .safetensors or .npz file with inputs under ``inputs`` (or ``x``, or
    the only key) and optional labels under ``labels`` (or ``y``); the first dimension indexes
    samples. Float inputs are fed as float32, integer inputs as int64, as stored (no scaling)."""

    modality = "tensor"

    def __init__(self, source: str, path: Path, data_key: str | None = None, label_key: str | None = None) -> None:
        super().__init__()
        self.source = source
        if not path.is_file():
            raise DataError(f"{source}: no such file {str(path)!r}")
        if path.suffix not in (".safetensors", ".npz"):
            raise DataError(f"{source}: {path.name} is neither .safetensors nor .npz")
        st = path.stat()
        arrays = _tensor_file(str(path), st.st_mtime_ns, st.st_size)
        keys = sorted(arrays)
        if data_key is not None:
            if data_key not in arrays:
                raise DataError(f"{source}: no key {data_key!r} (keys: {', '.join(keys)})")
            xk = data_key
        else:
            found = [k for k in ("inputs", "x") if k in arrays]
            rest = [k for k in keys if k not in ("labels", "y")]
            if found:
                xk = found[0]
            elif len(rest) == 1:
                xk = rest[0]
            else:
                raise DataError(f"{source}: which key holds the inputs? name it 'inputs' (or 'x'); keys: {', '.join(keys)}")
        if label_key is not None and label_key not in arrays:
            raise DataError(f"{source}: no label key {label_key!r} (keys: {', '.join(keys)})")
        yk = label_key or next((k for k in ("labels", "y") if k in arrays), None)
        x = arrays[xk]
        if x.ndim < 1 or x.shape[0] < 1:
            raise DataError(f"{source}: {xk!r} has shape {tuple(x.shape)}: the first dimension must count samples (≥ 1)")
        if x.dtype.kind not in "fiub":
            raise DataError(f"{source}: {xk!r} has dtype {x.dtype}: inputs must be numbers")
        self.x = x
        if yk is not None:
            y = arrays[yk]
            if y.ndim != 1 or y.shape[0] != x.shape[0]:
                raise DataError(f"{source}: {yk!r} has shape {tuple(y.shape)} but {xk!r} has {x.shape[0]} samples: "
                                f"labels must be one class index per sample, shape ({x.shape[0]},)")
            if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
                y = y.astype(np.int64)
            if y.dtype.kind not in "iu":
                raise DataError(f"{source}: {yk!r} has dtype {y.dtype}: labels must be integer class indices")
            self.labels, notes = _label_ids(y.astype(np.int64).tolist(), source)
            self.notes += notes
        self.key = xk

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def inputs(self, idx, prep=None):
        a = self.x[np.asarray(idx, dtype=np.int64)]
        t = torch.from_numpy(np.ascontiguousarray(a))
        return t.float() if a.dtype.kind == "f" else t.long()

    def sample_shape(self, prep=None):
        return tuple(int(d) for d in self.x.shape[1:])


class TextSet(SampleSet):
    """Text samples (lines, paragraphs or JSONL records) with optional labels."""

    modality, unit = "text", "texts"

    def __init__(self, source: str, texts: list[str], labels: np.ndarray | None = None) -> None:
        super().__init__()
        self.source, self.texts, self.labels = source, texts, labels
        if not texts:
            raise DataError(f"{source}: no text")

    def __len__(self) -> int:
        return len(self.texts)

    def inputs(self, idx, prep=None):
        return [self.texts[int(i)] for i in idx]


def _load_disk_dataset(source: str, path: Path):
    try:
        import datasets
    except ImportError:
        raise DataError(f"{source}: reading a saved Hugging Face dataset needs the datasets package: "
                        "pip install datasets") from None
    if not path.is_dir():
        raise DataError(f"{source}: {str(path)!r} is not a folder (save one with Dataset.save_to_disk)")
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        raise DataError(f"{source}: not a dataset saved with save_to_disk ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    notes = []
    if isinstance(ds, datasets.DatasetDict):
        splits = list(ds)
        if "train" in ds:
            name = "train"
        elif len(splits) == 1:
            name = splits[0]
        else:
            raise DataError(f"{source}: a dataset with splits {', '.join(splits)} and no 'train': save the split "
                            "to use on its own (dataset_dict['<split>'].save_to_disk(...))")
        ds = ds[name]
        if len(splits) > 1:
            notes.append(f"{source}: using split {name!r} of {', '.join(splits)}")
    return ds, notes


class DiskDataset(SampleSet):
    """``dataset:DIR``: ``datasets.load_from_disk``; a DatasetDict gives its 'train' split (or
    its only one). The input column is ``data_column`` or the first of image/img/pixel_values
    (image models) or text/sentence (text models); labels from ``label_column`` or label/labels."""

    def __init__(self, source: str, path: Path, data_column: str | None = None, label_column: str | None = None,
                 want: str = "image", class_to_idx: dict | None = None) -> None:
        super().__init__()
        self.source = source
        ds, self.notes = _load_disk_dataset(source, path)
        cols = list(ds.column_names)
        if data_column is not None:
            if data_column not in cols:
                raise DataError(f"{source}: no column {data_column!r} (columns: {', '.join(cols)})")
            col = data_column
        else:
            order = TEXT_COLUMNS if want == "text" else IMAGE_COLUMNS
            col = next((c for c in order if c in cols), None)
            if col is None:
                raise DataError(f"{source}: no {'text' if want == 'text' else 'image'} column among {', '.join(cols)}: "
                                f"name one with --data-column (looked for {', '.join(order)})")
        if label_column is not None and label_column not in cols:
            raise DataError(f"{source}: no label column {label_column!r} (columns: {', '.join(cols)})")
        lc = label_column or next((c for c in LABEL_COLUMNS if c in cols and c != col), None)
        import datasets
        feat = ds.features[col]
        if isinstance(feat, datasets.Image):
            self.modality, self.unit = "image", "images"
        elif isinstance(feat, datasets.Value) and feat.dtype in ("string", "large_string"):
            self.modality, self.unit = "text", "texts"
        else:
            self.modality = "tensor"
        self.ds, self.col = ds, col
        if len(ds) < 1:
            raise DataError(f"{source}: the dataset has no rows")
        if lc is not None:
            values = list(ds[lc])
            if values and isinstance(values[0], (list, dict)):
                raise DataError(f"{source}: label column {lc!r} holds {type(values[0]).__name__}s: labels must be one "
                                "class index or name per row")
            names = getattr(ds.features[lc], "names", None)
            if names and class_to_idx and all(n in class_to_idx for n in names):
                values = [names[v] if v >= 0 else v for v in values]
                self.notes.append(f"{source}: ClassLabel names mapped to the model's own class indices")
            self.labels, notes = _label_ids(values, f"{source} column {lc!r}", class_to_idx)
            self.notes += notes
        self._shape = None
        if self.modality == "tensor":
            first = np.asarray(ds.with_format("numpy")[0][col])
            if first.dtype.kind not in "fiub":
                raise DataError(f"{source}: column {col!r} holds {feat}: give an image, text or numeric array column "
                                "with --data-column")
            self._shape = tuple(int(d) for d in first.shape)

    def __len__(self) -> int:
        return len(self.ds)

    def inputs(self, idx, prep=None):
        rows = self.ds.select([int(i) for i in idx])
        if self.modality == "text":
            return [str(t) for t in rows[self.col]]
        if self.modality == "image":
            if prep is None:
                raise DataError(f"{self.source}: images need preprocessing settings (give --image-size)")
            out = []
            for i, img in zip(idx, rows[self.col]):
                try:
                    out.append(prep(img, f"{self.source} row {int(i)}"))
                except DataError:
                    raise
                except Exception as e:
                    raise DataError(f"{self.source} row {int(i)}: the image does not decode ({e})") from None
            return torch.stack(out) if out else torch.zeros((0, *prep.input_shape))
        try:
            a = np.stack([np.asarray(v) for v in rows.with_format("numpy")[self.col]])
        except ValueError:
            raise DataError(f"{self.source}: rows of column {self.col!r} have different shapes") from None
        t = torch.from_numpy(np.ascontiguousarray(a))
        return t.float() if a.dtype.kind == "f" else t.long()

    def sample_shape(self, prep=None):
        return self._shape if self.modality == "tensor" else super().sample_shape(prep)


def _path(source: str, prefix: str) -> Path:
    raw = source[len(prefix):]
    if not raw:
        raise DataError(f"{source!r}: give a path after {prefix!r}")
    return Path(os.path.expanduser(raw))


def is_sample_source(source: str | None) -> bool:
    return bool(source) and source.startswith(SAMPLE_PREFIXES)


def source_modality(source: str) -> str:
    """"image", "tensor", "digits", "dataset" (image, tensor or text: known once opened) or "text"."""
    if source == "digits":
        return "digits"
    if source.startswith("images:"):
        return "image"
    if source.startswith("tensors:"):
        return "tensor"
    if source.startswith("dataset:"):
        return "dataset"
    return "text"


def open_samples(source: str, want: str = "image", data_column: str | None = None, label_column: str | None = None,
                 class_to_idx: dict | None = None) -> SampleSet:
    """The sample set a source string names. ``want`` ("image" or "text") picks a dataset's
    default column; text sources (builtins, text:, jsonl:, file:) give a TextSet with labels
    from a JSONL ``label`` field (or ``label_column``) when present."""
    if source.startswith("images:"):
        return ImageFolder(source, _path(source, "images:"), class_to_idx)
    if source.startswith("tensors:"):
        return TensorFile(source, _path(source, "tensors:"), data_column, label_column)
    if source.startswith("dataset:"):
        return DiskDataset(source, _path(source, "dataset:"), data_column, label_column, want, class_to_idx)
    from workers.data import labeled_paragraphs
    texts, raw = labeled_paragraphs(source, data_column, label_column)
    labels, notes = _label_ids(raw, source, class_to_idx) if raw is not None else (None, [])
    s = TextSet(source, texts, labels)
    s.notes += notes
    return s
