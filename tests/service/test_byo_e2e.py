"""Issue 15's "done when", end to end: a user goes from ``torch.export.save(...)`` and a folder
of their own images to a policy and an export — locally through the CLI, and through a real
server (uvicorn + Ray, jobs really run) with the SDK. The model and images are made here, the
model in a subprocess so this test process stays free of torch, as a user's client is."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.service.conftest import Server

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

# a mobile-style CNN: a Conv2d subclass padding itself "same", depthwise conv, BatchNorm
MODEL = '''
import sys, torch, torch.nn as nn, torch.nn.functional as F
class SamePad(nn.Conv2d):
    def forward(self, x):
        h, w = x.shape[-2], x.shape[-1]
        ph = max((-(-h // self.stride[0]) - 1) * self.stride[0] + self.kernel_size[0] - h, 0)
        pw = max((-(-w // self.stride[1]) - 1) * self.stride[1] + self.kernel_size[1] - w, 0)
        return F.conv2d(F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2]), self.weight, self.bias,
                        self.stride, 0, self.dilation, self.groups)
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.bn0 = SamePad(3, 16, 3, 2, bias=False), nn.BatchNorm2d(16)
        self.dw, self.bn1 = SamePad(16, 16, 3, 1, groups=16, bias=False), nn.BatchNorm2d(16)
        self.pw, self.head = nn.Conv2d(16, 32, 1), nn.Linear(32, 3)
    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        x = F.relu(self.bn1(self.dw(x)))
        return self.head(F.relu(self.pw(x)).mean((2, 3)))
torch.manual_seed(0)
m = Net().eval()
with torch.no_grad():
    for bn in (m.bn0, m.bn1):
        bn.running_var.uniform_(0.5, 2.0); bn.running_mean.uniform_(-0.3, 0.3)
torch.export.save(torch.export.export(m, (torch.randn(1, 3, 24, 24),)), sys.argv[1])
'''


@pytest.fixture(scope="module")
def user(tmp_path_factory) -> Path:
    """net.pt2 and photos/<class>/*.png (three colour classes with noise), as a user has them."""
    from PIL import Image
    d = tmp_path_factory.mktemp("user")
    subprocess.run([sys.executable, "-c", MODEL, str(d / "net.pt2")], check=True, capture_output=True, timeout=300)
    rng = np.random.default_rng(0)
    for c, colour in enumerate(((200, 40, 40), (40, 200, 40), (40, 40, 200))):
        (d / "photos" / f"class{c}").mkdir(parents=True)
        for i in range(40):
            px = np.clip(np.array(colour) + rng.normal(0, 40, (32, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(d / "photos" / f"class{c}" / f"{i}.png")
    return d


def test_cli_search_then_export(user, tmp_path):
    out = tmp_path / "policy.json"
    r = subprocess.run([sys.executable, "-m", "service.cli", "search", "--model", "./net.pt2", "--calib", "images:./photos",
                        "--image-size", "24", "--image-mean", "0.5,0.5,0.5", "--image-std", "0.25,0.25,0.25",
                        "--fold-batchnorm", "--budget", "avg_bits=4.5", "--bits", "2,4,8", "--n-calib", "32",
                        "--n-eval", "32", "--refine-evals", "8", "--out", str(out)],
                       cwd=user, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    pol = json.loads(out.read_text())
    assert pol["model"]["ref"].startswith("export:") and pol["measured"]["metric"] == "kl_to_float"
    assert {l["name"] for l in pol["layers"]} | set(pol["float_layers"]) == {"stem", "dw", "pw", "head"}
    assert pol["preprocess"]["batchnorm_folded"] == [{"conv": "stem", "bn": "bn0"}, {"conv": "dw", "bn": "bn1"}]
    assert pol["preprocess"]["image"]["size"] == 24 and pol["preprocess"]["data"]["calibration"] == "images:./photos"
    assert "accuracy" in pol["measured"]["extra"] and "top1_agreement" in pol["measured"]["extra"]
    r = subprocess.run([sys.executable, "-m", "service.cli", "export", str(out), "--format", "torchao"],
                       cwd=user, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "stem" in r.stdout and "head" in r.stdout
    # wrong on purpose: an image size the program was not exported for → one line, exit 2
    r = subprocess.run([sys.executable, "-m", "service.cli", "search", "--model", "./net.pt2", "--calib", "images:./photos",
                        "--image-size", "32", "--budget", "avg_bits=4.5", "--n-calib", "8", "--n-eval", "8"],
                       cwd=user, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "exported for inputs of shape (3, 24, 24)" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    var = tmp_path_factory.mktemp("byo-var")
    srv = Server(var, f"sqlite:///{var / 'bitplan.db'}").start()
    yield srv
    srv.stop()


def test_sdk_upload_model_and_images_then_a_job_runs(server, user):
    with server.client() as c:
        model = c.register_model(export=user / "net.pt2")
        assert model.kind == "classifier" and model.n_layers == 4 and model.metric == "kl_to_float"
        data = c.upload_data(user / "photos")
        assert data.kind == "images" and data.samples == 120 and data.classes == ["class0", "class1", "class2"]
        job = c.submit(model.id, {"avg_bits": 4.5}, formats={"bits": [2, 4, 8]}, proxy="fisher", solver="ilp",
                       calibration={"source": data.source, "n_samples": 32}, evaluation={"n_samples": 24},
                       image_size=24, image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25], fold_batchnorm=True)
        done = c.wait(job.id, timeout=900)
        assert done.status == "succeeded", done.error
        pol = c.policy(done.policy_ids[0])
    assert pol["measured"]["metric"] == "kl_to_float" and pol["cost"]["avg_bits"] <= 4.5 + 1e-9
    assert len(pol["preprocess"]["batchnorm_folded"]) == 2 and pol["preprocess"]["image"]["size"] == 24
    assert pol["measured"]["extra"]["top1_agreement"] > 0
