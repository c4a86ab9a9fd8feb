"""Sample sets for non-text models (image folders, tensor files, saved HF datasets), image
preprocessing with known numbers, and the classifier data plan: disjoint calibration / Hessian /
judge / evaluation picks, and errors that name the problem and the fix."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

PIL = pytest.importorskip("PIL", reason="image data needs Pillow (the engine extra installs it)")
from PIL import Image  # noqa: E402

from proxies.tasks import ClassifierTask  # noqa: E402
from workers.batches import (build_batches, hessian_batches, judge_batches, plan_for,  # noqa: E402
                             prepared_batches)
from workers.data import DataError  # noqa: E402
from workers.samples import (ImageFolder, ImagePrep, TensorFile, hf_image_prep, open_samples,  # noqa: E402
                             resolve_prep)
from workers.sources import LoadedModel  # noqa: E402

# ---------------------------------------------------------------- preprocessing


def test_crop_and_normalize_give_known_numbers():
    a = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)  # h=4, w=6
    prep = ImagePrep(size=(2, 2), resize=4, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 2.0))
    x = prep(Image.fromarray(a))
    # shorter side already 4: no resize; center crop rows 1..2, columns 2..3 (torchvision's rounding)
    want = a[1:3, 2:4].astype(np.float32) / 255.0
    want = (want - np.array([0.1, 0.2, 0.3], dtype=np.float32)) / np.array([0.5, 0.25, 2.0], dtype=np.float32)
    assert x.shape == (3, 2, 2) and x.dtype == torch.float32
    np.testing.assert_allclose(x.numpy(), want.transpose(2, 0, 1), rtol=1e-6, atol=1e-7)


def test_resize_shorter_side_then_center_crop_matches_pil():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (20, 10, 3), dtype=np.uint8)  # h=20, w=10 (portrait)
    prep = ImagePrep(size=(4, 4), resize=5, mean=(0.0,) * 3, std=(1.0,) * 3)
    x = prep(Image.fromarray(a))
    r = np.asarray(Image.fromarray(a).resize((5, 10), Image.Resampling.BILINEAR), dtype=np.float32) / 255
    top, left = int(round((10 - 4) / 2)), int(round((5 - 4) / 2))
    np.testing.assert_allclose(x.numpy(), r[top:top + 4, left:left + 4].transpose(2, 0, 1), atol=1e-7)
    # exact resize (ViT-style) warps to h×w, no crop left
    warp = ImagePrep(size=(4, 4), resize=(4, 4), mean=(0.0,) * 3, std=(1.0,) * 3)
    r = np.asarray(Image.fromarray(a).resize((4, 4), Image.Resampling.BILINEAR), dtype=np.float32) / 255
    np.testing.assert_allclose(warp(Image.fromarray(a)).numpy(), r.transpose(2, 0, 1), atol=1e-7)


def test_grayscale_and_rgba_become_rgb_and_one_channel_models_get_gray():
    gray = Image.fromarray(np.full((8, 8), 51, dtype=np.uint8))  # 51/255 = 0.2
    rgb = ImagePrep((8, 8), 8, (0.0,) * 3, (1.0,) * 3)
    x = rgb(gray)
    assert x.shape == (3, 8, 8) and torch.allclose(x, torch.full_like(x, 0.2))
    rgba = Image.fromarray(np.full((8, 8, 4), 102, dtype=np.uint8), "RGBA")
    assert rgb(rgba).shape == (3, 8, 8)
    one = ImagePrep((8, 8), 8, (0.0,), (1.0,), channels=1)
    y = one(Image.fromarray(np.full((8, 8, 3), 51, dtype=np.uint8)))
    assert y.shape == (1, 8, 8) and torch.allclose(y, torch.full_like(y, 0.2))


def test_prep_to_dict_states_the_recipe():
    d = ImagePrep((224, 224), 256, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), source="user").to_dict()
    assert d["size"] == 224 and d["resize"] == 256 and d["resize_mode"] == "shorter_side"
    assert d["mean"] == [0.485, 0.456, 0.406] and d["interpolation"] == "bilinear" and d["source"] == "user"
    json.dumps(d)


def test_resolve_prep_user_then_processor_then_input_shape():
    hf = {"size": 224, "resize": 256, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    p = resolve_prep(model_prep=hf, input_shape=(3, 224, 224))
    assert (p.size, p.resize, p.mean, p.std) == ((224, 224), 256, (0.5,) * 3, (0.5,) * 3)
    p = resolve_prep(image_size=160, image_mean=[0.4], model_prep=hf)
    assert p.size == (160, 160) and p.resize == round(160 / 0.875) and p.mean == (0.4,) * 3 and p.std == (0.5,) * 3
    assert "size: user" in p.source and "std: hf processor" in p.source
    p = resolve_prep(input_shape=(1, 28, 28))
    assert p.size == (28, 28) and p.resize == 32 and p.channels == 1 and p.mean == (0.0,) and p.std == (1.0,)
    assert "mean: 0.0 (none given)" in p.source
    with pytest.raises(DataError, match="--image-size"):
        resolve_prep()
    with pytest.raises(DataError, match="3 values but the model takes 1-channel"):
        resolve_prep(image_mean=[0.1, 0.2, 0.3], input_shape=(1, 28, 28))
    with pytest.raises(DataError, match="5-channel"):
        resolve_prep(input_shape=(5, 32, 32))
    with pytest.raises(DataError, match="smaller than the crop"):
        resolve_prep(image_size=224, resize=200)


def test_hf_processor_configs():
    vit = {"do_resize": True, "size": {"height": 224, "width": 224}, "image_mean": [0.5] * 3,
           "image_std": [0.5] * 3, "resample": 2, "do_normalize": True}
    assert hf_image_prep(vit) == {"size": (224, 224), "resize": (224, 224), "mean": [0.5] * 3, "std": [0.5] * 3,
                                  "interpolation": "bilinear"}
    convnext = {"size": {"shortest_edge": 224}, "crop_pct": 0.875, "resample": 3, "image_mean": [0.485, 0.456, 0.406],
                "image_std": [0.229, 0.224, 0.225]}
    d = hf_image_prep(convnext)
    assert d["size"] == (224, 224) and d["resize"] == 256 and d["interpolation"] == "bicubic"
    mobilenet = {"size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224}, "do_center_crop": True,
                 "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    d = hf_image_prep(mobilenet)
    p = resolve_prep(model_prep=d)
    assert p.size == (224, 224) and p.resize == 256
    assert hf_image_prep({}) is None


# ---------------------------------------------------------------- image folders


def _png(path, value: int, size=(12, 10), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
    Image.fromarray(np.full(shape, value, dtype=np.uint8), mode).save(path)


@pytest.fixture
def folder(tmp_path):
    """Three classes, 10 images each, every image a distinct gray level (its identity)."""
    d = tmp_path / "imgs"
    for c, name in enumerate(["cat", "dog", "owl"]):
        for i in range(10):
            ext = ".png" if i % 2 else ".jpg"
            _png(d / name / f"{i:02d}{ext}", 7 * (10 * c + i) + 3)
    return d


def test_class_subfolders_give_sorted_labels(folder):
    s = ImageFolder(f"images:{folder}", folder)
    assert len(s) == 30 and s.classes == ["cat", "dog", "owl"]
    assert s.labels.tolist() == [0] * 10 + [1] * 10 + [2] * 10
    assert any("sorted name order" in n for n in s.notes)
    # the model's own class indices win when its config names every folder
    s = ImageFolder(f"images:{folder}", folder, {"owl": 0, "cat": 5, "dog": 7, "eel": 1})
    assert s.labels.tolist() == [5] * 10 + [7] * 10 + [0] * 10


def test_numbered_folders_and_flat_folders(tmp_path):
    for n in ("0", "2", "10"):
        _png(tmp_path / "num" / n / "a.png", 10)
    s = open_samples(f"images:{tmp_path / 'num'}")
    assert sorted(s.labels.tolist()) == [0, 2, 10]
    for i in range(3):
        _png(tmp_path / "flat" / f"{i}.bmp", 10 * i)
    s = open_samples(f"images:{tmp_path / 'flat'}")
    assert len(s) == 3 and s.labels is None and s.modality == "image"


def test_a_file_that_is_not_an_image_is_named_before_any_decoding(folder):
    (folder / "dog" / "05.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"05\.png is not an image that Pillow can read"):
        ImageFolder(f"images:{folder}", folder)


def test_only_the_picked_images_are_decoded(folder):
    # a header that opens but pixel data that does not: caught when (and only when) it is picked
    from PIL import Image
    pixels = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "dog" / "05.png", "JPEG")  # a JPEG under a .png name: fine
    good = (folder / "dog" / "05.png").read_bytes()
    (folder / "dog" / "05.png").write_bytes(good[: len(good) * 6 // 10])  # truncated: the header still reads
    s = ImageFolder(f"images:{folder}", folder)
    prep = ImagePrep((8, 8), 8, (0.0,) * 3, (1.0,) * 3)
    x = s.inputs(np.array([0, 1, 29]), prep)
    assert x.shape == (3, 3, 8, 8)
    bad = s.files.index(folder / "dog" / "05.png")
    with pytest.raises(DataError, match=r"05\.png.*does not decode"):
        s.inputs(np.array([0, bad]), prep)


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        open_samples(f"images:{tmp_path / 'none'}")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="no images"):
        open_samples(f"images:{tmp_path / 'empty'}")
    _png(tmp_path / "mixed" / "a.png", 1)
    _png(tmp_path / "mixed" / "c" / "b.png", 1)
    with pytest.raises(DataError, match="both directly inside and in subfolders"):
        open_samples(f"images:{tmp_path / 'mixed'}")


# ---------------------------------------------------------------- tensor files


def test_npz_and_safetensors(tmp_path):
    from safetensors.torch import save_file
    x = np.random.default_rng(0).normal(size=(20, 2, 3, 3)).astype(np.float32)
    y = np.arange(20) % 4
    np.savez(tmp_path / "a.npz", inputs=x, labels=y)
    s = open_samples(f"tensors:{tmp_path / 'a.npz'}")
    assert len(s) == 20 and s.sample_shape() == (2, 3, 3) and s.labels.tolist() == y.tolist()
    assert torch.equal(s.inputs(np.array([3, 1])), torch.from_numpy(x[[3, 1]]))
    save_file({"x": torch.from_numpy(x).to(torch.bfloat16), "y": torch.from_numpy(y.astype(np.float32))},
              str(tmp_path / "b.safetensors"))
    s = open_samples(f"tensors:{tmp_path / 'b.safetensors'}")
    assert s.inputs(np.array([0])).dtype == torch.float32 and s.labels.tolist() == y.tolist()
    np.savez(tmp_path / "only.npz", feats=x)
    s = open_samples(f"tensors:{tmp_path / 'only.npz'}")
    assert s.key == "feats" and s.labels is None


@pytest.mark.parametrize("arrays,words", [
    (dict(inputs=np.zeros((5, 3)), labels=np.zeros(4)), r"'labels' has shape \(4,\) but 'inputs' has 5 samples"),
    (dict(inputs=np.zeros((5, 3)), labels=np.zeros((5, 2))), r"one class index per sample, shape \(5,\)"),
    (dict(inputs=np.zeros((5, 3)), labels=np.full(5, 0.5)), "integer class indices"),
    (dict(a=np.zeros((5, 3)), b=np.zeros((5, 3))), "which key holds the inputs"),
    (dict(inputs=np.zeros(())), "first dimension must count samples"),
])
def test_tensor_file_errors(tmp_path, arrays, words):
    np.savez(tmp_path / "t.npz", **arrays)
    with pytest.raises(DataError, match=words):
        open_samples(f"tensors:{tmp_path / 't.npz'}")


def test_pickled_and_missing_tensor_files_are_refused(tmp_path):
    np.savez(tmp_path / "p.npz", inputs=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="cannot be read as .npz"):
        open_samples(f"tensors:{tmp_path / 'p.npz'}")
    with pytest.raises(DataError, match="no such file"):
        open_samples(f"tensors:{tmp_path / 'q.npz'}")
    (tmp_path / "r.pt").write_bytes(b"x")
    with pytest.raises(DataError, match="neither .safetensors nor .npz"):
        open_samples(f"tensors:{tmp_path / 'r.pt'}")
    np.savez(tmp_path / "k.npz", inputs=np.zeros((3, 2)))
    with pytest.raises(DataError, match="no key 'pix'"):
        TensorFile("t", tmp_path / "k.npz", data_key="pix")


# ---------------------------------------------------------------- saved HF datasets


def test_saved_dataset_image_and_text_columns(tmp_path):
    datasets = pytest.importorskip("datasets", reason="dataset:DIR needs the datasets package")
    feats = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"]),
                               "sentence": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"img": [Image.fromarray(np.full((6, 6, 3), 40 * i, np.uint8)) for i in range(4)],
                                     "label": [0, 1, 1, 0], "sentence": ["w", "x", "y", "z"]}, features=feats)
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "dd"))
    s = open_samples(f"dataset:{tmp_path / 'dd'}")
    assert s.modality == "image" and len(s) == 4 and s.labels.tolist() == [0, 1, 1, 0]
    assert any("split 'train'" in n for n in s.notes)
    x = s.inputs(np.array([2]), ImagePrep((4, 4), 6, (0.0,) * 3, (1.0,) * 3))
    assert x.shape == (1, 3, 4, 4) and torch.allclose(x, torch.full_like(x, 80 / 255))
    t = open_samples(f"dataset:{tmp_path / 'dd'}", want="text")
    assert t.modality == "text" and t.inputs(np.array([0, 3])) == ["w", "z"]
    with pytest.raises(DataError, match="no column 'pixels'.*img, label, sentence"):
        open_samples(f"dataset:{tmp_path / 'dd'}", data_column="pixels")
    with pytest.raises(DataError, match="not a dataset saved with save_to_disk"):
        open_samples(f"dataset:{tmp_path}")
    from workers.data import paragraphs
    assert paragraphs(f"dataset:{tmp_path / 'dd'}") == ["w", "x", "y", "z"]


# ---------------------------------------------------------------- the classifier data plan


class Mean(nn.Module):
    """A classifier whose logits read the mean pixel: enough to tell images apart."""

    def __init__(self, channels: int = 3, classes: int = 3):
        super().__init__()
        self.fc = nn.Linear(channels, classes)

    def forward(self, x):
        return self.fc(x.float().mean((2, 3)))


def _lm(input_shape=None, image_prep=None, kind="classifier", tokenizer=None, task=None):
    return LoadedModel("test", Mean().eval(), task or ClassifierTask(), kind, tokenizer, None, None,
                       input_shape=input_shape, image_prep=image_prep)


def _ids(batches) -> set[int]:
    """Identity of each image: its gray level (7·k + 3 for image k)."""
    return {int(round(float(v) * 255)) for b in batches for v in b["x"][:, 0, 0, 0]}


def test_image_plan_picks_are_disjoint_and_eval_is_held_out(folder):
    lm = _lm(input_shape=(3, 8, 8))
    src = f"images:{folder}"
    plan = plan_for(lm, src, n_calib=12, n_eval=6)
    assert plan.input_shape == (3, 8, 8) and plan.prep.size == (8, 8) and plan.n_pool == 24
    calib, ev, info = build_batches(lm, plan)
    hb, nh = hessian_batches(lm, plan, 5)
    jb, nj = judge_batches(lm, plan, 100, n_hessian=nh)
    c, e, h, j = _ids(calib), _ids(ev), _ids(hb), _ids(jb)
    assert (len(c), len(e), len(h), len(j)) == (12, 6, 5, 24 - 12 - 5) == (12, 6, nh, nj)
    assert not c & e and not h & (c | e) and not j & (c | e | h)
    assert info["samples"] == 12 and info["image_prep"]["size"] == 8
    # labels come along; evaluation does not move with the seed, calibration does
    assert all("y" in b for b in calib + ev)
    other = build_batches(lm, plan_for(lm, src, n_calib=12, n_eval=6, seed=1))
    assert _ids(other[1]) == e and _ids(other[0]) != c
    # the eval hold-out is a seeded permutation, not file order (class folders are sorted)
    assert len({int(b["y"][i]) for b in ev for i in range(len(b["y"]))}) > 1


def test_default_eval_shrinks_to_ten_percent_with_a_note(folder):
    lm = _lm(input_shape=(3, 8, 8))
    plan = plan_for(lm, f"images:{folder}", n_calib=20)
    assert plan.n_eval == 3 and plan.n_pool == 27
    assert any("3 of the 30 images" in n for n in plan.notes)


def test_too_few_images_say_the_numbers_and_the_fix(folder):
    lm = _lm(input_shape=(3, 8, 8))
    with pytest.raises(DataError, match=r"has 30 images; calibration 64 \+ evaluation 3 need 67: add images or lower "
                                        r"--n-calib/--n-eval"):
        plan_for(lm, f"images:{folder}")
    with pytest.raises(DataError, match=r"calibration 25 \+ evaluation 10 need 35"):
        plan_for(lm, f"images:{folder}", n_calib=25, n_eval=10)


def test_separate_evaluation_source_is_used_whole(folder, tmp_path):
    for i in range(5):
        _png(tmp_path / "ev" / f"{i}.png", 250 - i, size=(9, 9))
    lm = _lm(image_prep={"size": 8, "resize": 9})
    plan = plan_for(lm, f"images:{folder}", f"images:{tmp_path / 'ev'}", n_calib=30)
    assert plan.n_eval == 5 and plan.n_pool == 30 and plan.prep.resize == 9
    calib, ev, _ = build_batches(lm, plan)
    assert len(_ids(calib)) == 30 and _ids(ev) == {250, 249, 248, 247, 246}
    assert all("y" not in b for b in ev)  # an unlabeled evaluation folder: KL and agreement only
    assert hessian_batches(lm, plan, 8) == ([], 0)  # the whole calibration source is calibration
    with pytest.raises(DataError, match=r"has 5 images; evaluation 6 needs 6"):
        plan_for(lm, f"images:{folder}", f"images:{tmp_path / 'ev'}", n_calib=30, n_eval=6)
    with pytest.raises(DataError, match=r"has 30 images; calibration 31 needs 31"):
        plan_for(lm, f"images:{folder}", f"images:{tmp_path / 'ev'}", n_calib=31)


def test_prepared_image_batches_evaluate(folder):
    lm = _lm(input_shape=(3, 8, 8))
    plan = plan_for(lm, f"images:{folder}", n_calib=10, n_eval=10)
    calib, ev, _ = prepared_batches(lm, plan)
    m = lm.task.evaluate(lm.model, ev)
    assert m["kl_to_float"] == pytest.approx(0, abs=1e-6) and m["top1_agreement"] == 1.0 and "accuracy" in m


def test_plan_errors_for_data_that_does_not_fit(folder, tmp_path):
    lm = _lm(input_shape=(3, 8, 8))
    with pytest.raises(DataError, match="give calibration data, e.g. --calib images:DIR"):
        plan_for(lm)
    with pytest.raises(DataError, match="is text, but this classifier reads images or tensors"):
        plan_for(lm, "pydoc")
    with pytest.raises(DataError, match="--image-size"):
        plan_for(_lm(), f"images:{folder}", n_calib=10, n_eval=5)
    np.savez(tmp_path / "t.npz", inputs=np.zeros((40, 3, 8, 8), np.float32))
    np.savez(tmp_path / "u.npz", inputs=np.zeros((40, 3, 4, 4), np.float32))
    with pytest.raises(DataError, match="different shapes"):
        plan_for(lm, f"tensors:{tmp_path / 't.npz'}", f"tensors:{tmp_path / 'u.npz'}", n_calib=8)
    with pytest.raises(DataError, match="'digits' calibrates and evaluates on its own fixed splits"):
        plan_for(lm, "digits", f"images:{folder}")


def test_tensor_plan_batches(tmp_path):
    x = np.random.default_rng(1).normal(size=(50, 3, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "t.npz", x=x, y=np.arange(50) % 3)
    lm = _lm()
    plan = plan_for(lm, f"tensors:{tmp_path / 't.npz'}", n_calib=16, image_size=224)
    assert plan.input_shape == (3, 4, 4) and plan.prep is None and plan.n_eval == 5
    assert any("ignored" in n for n in plan.notes)
    calib, ev, info = build_batches(lm, plan)
    rows = lambda bs: {r.numpy().tobytes() for b in bs for r in b["x"]}
    assert len(rows(calib)) == 16 and len(rows(ev)) == 5 and not rows(calib) & rows(ev)
    assert info["samples"] == 16 and "image_prep" not in info


def test_large_images_get_smaller_batches(folder):
    lm = _lm(input_shape=(3, 224, 224))
    plan = plan_for(lm, f"images:{folder}", n_calib=10, n_eval=5)
    assert plan.batch_size == 32 and plan.input_shape == (3, 224, 224)


class FakeTok:
    """Whitespace 'tokenizer': one id per word (its length). Like a Hugging Face tokenizer, it
    pads only when asked, and ``pad`` pads encoded rows to the longest."""

    def __call__(self, texts, padding=False, truncation=True, max_length=8, return_tensors=None):
        ids = [[len(w) for w in t.split()][:max_length] for t in texts]
        rows = [{"input_ids": i, "attention_mask": [1] * len(i)} for i in ids]
        return self.pad(rows) if padding else {k: [r[k] for r in rows] for k in ("input_ids", "attention_mask")}

    def pad(self, rows, padding=True, return_tensors="pt"):
        n = max(len(r["input_ids"]) for r in rows)
        return {k: torch.tensor([r[k] + [0] * (n - len(r[k])) for r in rows]) for k in ("input_ids", "attention_mask")}


def test_text_classifier_reads_jsonl_labels(tmp_path):
    f = tmp_path / "reviews.jsonl"
    f.write_text("\n".join(json.dumps({"text": f"review number {i} " + "x" * (i % 7), "label": i % 2})
                           for i in range(40)), encoding="utf-8")
    lm = _lm(kind="text_classifier", tokenizer=FakeTok(), task=ClassifierTask(inputs="text"))
    plan = plan_for(lm, f"jsonl:{f}", n_calib=16, n_eval=8, seq_len=8)
    assert plan.input_shape is None and plan.n_pool == 32
    calib, ev, info = build_batches(lm, plan)
    assert [sorted(b) for b in calib] == [["attention_mask", "input_ids", "y"]]
    assert info["samples"] == 16 and sum(len(b["y"]) for b in ev) == 8
    jb, n = judge_batches(lm, plan, 100)
    assert n == 16
    with pytest.raises(DataError, match="image data, but this text_classifier model reads text"):
        plan_for(lm, f"images:{tmp_path}")
