"""User models as graphs (workers/graphs.py): torch.export programs whose layer ops become
real modules, TorchScript probed through its graph, and BatchNorm folding — on a small
depthwise / "same"-padding CNN with BatchNorm that the tests build and export both ways."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from proxies.base import swapped
from proxies.discovery import discover_layers
from proxies.gptq import HessianCollector
from proxies.quantizers import GPTQQuantizer, build_quantizer
from proxies.tasks import ClassifierTask
from search.formats import Format
from workers.graphs import ExportedModel, GraphError, fold_batchnorm, is_export_archive, is_torchscript_archive, \
    load_export


class SameConv(nn.Conv2d):
    """TF-style static "same" padding inside forward (as EfficientNet ports do): F.pad, then a
    conv with padding 0, so the module's ``padding`` attribute says nothing about it."""

    def forward(self, x):
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        oh, ow = -(-ih // sh), -(-iw // sw)
        ph = max((oh - 1) * sh + (kh - 1) * self.dilation[0] + 1 - ih, 0)
        pw = max((ow - 1) * sw + (kw - 1) * self.dilation[1] + 1 - iw, 0)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class Net(nn.Module):
    """stem ("same", stride 2) → BN → depthwise → BN → pointwise (bias) → BN → pool → Linear."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            SameConv(3, 8, 3, stride=2, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


LAYERS = ["features.0", "features.3", "features.6", "head"]
SHAPE = (3, 16, 16)


def make_net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    net = Net().eval()
    with torch.no_grad():  # BN statistics that are not the identity, so folding does something
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-1, 1)
    return net


def example(model):
    return model(torch.zeros(1, *SHAPE))


@pytest.fixture(scope="module")
def net() -> Net:
    return make_net()


@pytest.fixture(scope="module")
def pt2(net, tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "net.pt2"
    torch.export.save(torch.export.export(net, (torch.randn(1, *SHAPE),)), path)
    return path


@pytest.fixture(scope="module")
def ts(net, tmp_path_factory):
    path = tmp_path_factory.mktemp("script") / "net.ts"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(copy.deepcopy(net)), str(path))
    return path


def load_ts(path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path))


def by_name(pairs):
    return {info.name: (info, m) for info, m in pairs}


# ---------------------------------------------------------------- torch.export programs


def test_export_layers_are_real_modules_with_the_original_names(net, pt2):
    model, shape = load_export(pt2)
    assert shape == SHAPE and isinstance(model, ExportedModel) and not model.training
    L = by_name(discover_layers(model, example))
    assert list(L) == LAYERS
    assert [L[n][0].kind for n in LAYERS] == ["Conv2d", "Conv2d", "Conv2d", "Linear"]
    assert isinstance(L["features.3"][1], nn.Conv2d) and L["features.3"][1].groups == 8
    assert sorted(model.state_dict()) == sorted(net.state_dict())  # no prefix, nothing duplicated
    eager = by_name(discover_layers(net, example))
    for n in LAYERS:  # MACs from real output positions, as for the eager model
        assert L[n][0].macs == eager[n][0].macs and L[n][0].shape == eager[n][0].shape


def test_export_runs_any_batch_like_the_eager_model(net, pt2):
    model, _ = load_export(pt2)
    x = torch.randn(5, *SHAPE)
    with torch.no_grad():
        assert torch.allclose(model(x), net(x), atol=1e-5)


def test_export_hooks_fire_and_weight_swaps_change_the_output(pt2):
    model, _ = load_export(pt2)
    seen = []
    pairs = discover_layers(model)
    hs = [m.register_forward_hook(lambda m, i, o: seen.append(type(m).__name__)) for _, m in pairs]
    x = torch.randn(3, *SHAPE)
    with torch.no_grad():
        y = model(x)
    for h in hs:
        h.remove()
    # exported at batch 1, but nothing in it depends on the batch: it runs batch 3 at once
    assert model.batch is None and seen.count("Conv2d") == 3 and seen.count("Linear") == 1
    conv = pairs[0][1]
    with torch.no_grad(), swapped([conv], [torch.zeros_like(conv.weight)]):
        assert not torch.allclose(model(x), y)
    with torch.no_grad():
        assert torch.equal(model(x), y)  # restored


def test_export_gptq_hessians_equal_the_eager_models(net, pt2):
    model, _ = load_export(pt2)
    x = torch.randn(4, *SHAPE)
    got = {}
    for m in (net, model):
        mods = [mm for _, mm in discover_layers(m)]
        with HessianCollector(mods, m) as col:
            col.runner(x)
        got[id(m)] = col.hessians()
    for i in range(len(LAYERS)):
        assert torch.allclose(got[id(model)][i], got[id(net)][i], atol=1e-5)


def test_export_input_shape_that_does_not_fit_names_the_fix(pt2):
    model, _ = load_export(pt2)
    with pytest.raises(GraphError, match=r"exported for inputs of shape \(3, 16, 16\); the data gives \(1, 8, 8\).*"
                                         r"--image-size 16"):
        model(torch.zeros(2, 1, 8, 8))


def test_not_an_export_archive(tmp_path, ts):
    bad = tmp_path / "x.pt2"
    bad.write_bytes(b"not a zip")
    with pytest.raises(GraphError, match="is not a torch.export archive.*torch.export.save"):
        load_export(bad)
    with pytest.raises(GraphError, match="is a TorchScript archive.*torchscript:"):
        load_export(ts)
    assert is_torchscript_archive(ts) and not is_export_archive(ts) and not is_torchscript_archive(bad)


def test_two_inputs_and_no_parameters_are_refused(tmp_path):
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, a, b):
            return self.fc(a + b)

    p = tmp_path / "two.pt2"
    torch.export.save(torch.export.export(Two(), (torch.randn(1, 4), torch.randn(1, 4))), p)
    assert is_export_archive(p)
    with pytest.raises(GraphError, match="takes 2 user inputs.*one tensor"):
        load_export(p)
    q = tmp_path / "relu.pt2"
    torch.export.save(torch.export.export(nn.ReLU(), (torch.randn(1, 4),)), q)
    with pytest.raises(GraphError, match="no parameters"):
        load_export(q)


class Shared(nn.Module):
    """One Linear applied twice, and a dict output: one layer module called twice."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        h = self.fc(torch.relu(self.fc(x)))
        return {"logits": self.out(h), "hidden": h}


def test_reused_weights_become_one_module_and_outputs_keep_their_structure(tmp_path):
    torch.manual_seed(0)
    eager = Shared().eval()
    p = tmp_path / "shared.pt2"
    torch.export.save(torch.export.export(eager, (torch.randn(2, 6),)), p)
    model, shape = load_export(p)
    assert shape == (6,) and model.batch is None  # nothing depends on the batch: freed
    model.batch = 2  # run it as a program with its batch baked in would be: in chunks of 2
    L = by_name(discover_layers(model))
    assert list(L) == ["fc", "out"]
    calls = []
    h = L["fc"][1].register_forward_hook(lambda m, i, o: calls.append(1))
    x = torch.randn(5, 6)  # 5 in chunks of 2: the last chunk padded and trimmed
    with torch.no_grad():
        out, ref = model(x), eager(x)
    h.remove()
    assert len(calls) == 2 * 3
    assert set(out) == {"logits", "hidden"} and out["logits"].shape == (5, 3)
    assert torch.allclose(out["logits"], ref["logits"], atol=1e-6) and torch.allclose(out["hidden"], ref["hidden"],
                                                                                        atol=1e-6)


# ---------------------------------------------------------------- TorchScript through the probe


def test_torchscript_macs_equal_the_eager_models(net, ts):
    sm = load_ts(ts)
    got, want = by_name(discover_layers(sm, example)), by_name(discover_layers(net, example))
    assert list(got) == LAYERS
    for n in LAYERS:
        assert got[n][0].macs == want[n][0].macs, n
    assert got["features.0"][0].macs == got["features.0"][0].numel * 64  # stride 2 "same": 8×8 positions


def test_torchscript_gptq_hessians_equal_the_eager_models(net, ts):
    sm = load_ts(ts)
    batches = [{"x": torch.randn(6, *SHAPE), "y": torch.randint(0, 10, (6,))} for _ in range(2)]
    qs = {}
    for name, m in (("eager", net), ("script", sm)):
        mods = [mm for _, mm in discover_layers(m)]
        qs[name] = build_quantizer("gptq", {}, m, mods, ClassifierTask(), batches, names=LAYERS)
    assert isinstance(qs["script"], GPTQQuantizer) and sorted(qs["script"].hessians) == [0, 1, 2, 3]
    for i in range(4):
        assert torch.allclose(qs["script"].hessians[i], qs["eager"].hessians[i], atol=1e-5)
    fmt = Format(3, 8)
    assert torch.allclose(qs["script"].weight(0, fmt), qs["eager"].weight(0, fmt), atol=1e-5)
    assert "rtn_layers" not in qs["script"].record()


# ---------------------------------------------------------------- BatchNorm folding


EXPECTED_FOLDS = [{"conv": "features.0", "bn": "features.1"}, {"conv": "features.3", "bn": "features.4"},
                  {"conv": "features.6", "bn": "features.7"}]


def _check_fold(model, layer_weight, reference: Net):
    x = torch.randn(5, *SHAPE)
    before = layer_weight().detach().clone()
    folds = fold_batchnorm(model, x[:1])
    assert folds == EXPECTED_FOLDS
    assert not torch.allclose(layer_weight(), before)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), rtol=1e-4, atol=1e-5)


def test_fold_batchnorm_eager(net):
    model = copy.deepcopy(net)
    _check_fold(model, lambda: model.features[0].weight, net)
    assert torch.allclose(model.features[1].weight, torch.ones(8))  # the BN is a pure shift now
    assert torch.equal(model.features[1].running_mean, torch.zeros(8))


def test_fold_batchnorm_export(net, pt2):
    model, _ = load_export(pt2)
    _check_fold(model, lambda: model.get_submodule("features.3").weight, net)


def test_fold_batchnorm_torchscript(net, ts):
    sm = load_ts(ts)
    _check_fold(sm, lambda: dict(sm.named_modules())["features.6"].weight, net)


def test_fold_skips_a_conv_whose_output_has_another_user():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.conv2 = nn.Conv2d(4, 4, 1)
            self.bn2 = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn2(self.conv2(self.bn(y) + y))  # y feeds the BN and the sum

    torch.manual_seed(0)
    m = Residual().eval()
    with torch.no_grad():
        for bn in (m.bn, m.bn2):
            bn.running_var.uniform_(0.5, 2)
            bn.running_mean.uniform_(-1, 1)
    x = torch.randn(2, 4, 6, 6)
    ref = m(x).detach()
    assert fold_batchnorm(m, x[:1]) == [{"conv": "conv2", "bn": "bn2"}]
    assert torch.allclose(m(x), ref, rtol=1e-4, atol=1e-5)


class Tokens(nn.Module):
    """Embedding → Conv1d ('same' string padding) → Conv2d ('valid') → Linear."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 8, padding_idx=0)
        self.c1d = nn.Conv1d(8, 8, 3, padding="same")
        self.c2d = nn.Conv2d(1, 2, 2, padding="valid")
        self.fc = nn.Linear(2 * 7 * 5, 4)

    def forward(self, ids):
        h = self.c1d(self.embed(ids).transpose(1, 2))  # (n, 8, 6)
        return self.fc(self.c2d(h.unsqueeze(1)).flatten(1))


def test_embedding_conv1d_and_string_padding_are_rewritten(tmp_path):
    torch.manual_seed(0)
    eager = Tokens().eval()
    p = tmp_path / "tokens.pt2"
    torch.export.save(torch.export.export(eager, (torch.randint(0, 20, (1, 6)),)), p)
    model, shape = load_export(p)
    assert shape == (6,)
    L = by_name(discover_layers(model, lambda m: m(torch.zeros(1, 6, dtype=torch.long)), include_embeddings=True))
    assert [(n, L[n][0].kind) for n in L] == [("embed", "Embedding"), ("c1d", "Conv1d"), ("c2d", "Conv2d"),
                                              ("fc", "Linear")]
    assert L["embed"][1].padding_idx == 0 and L["c1d"][1].padding == "same"
    want = by_name(discover_layers(eager, lambda m: m(torch.zeros(1, 6, dtype=torch.long)), include_embeddings=True))
    assert all(L[n][0].macs == want[n][0].macs for n in L)
    ids = torch.randint(0, 20, (3, 6))
    with torch.no_grad():
        assert torch.allclose(model(ids), eager(ids), atol=1e-6)


class _BakedBatch(nn.Module):
    """A program that hard-codes its export batch size (``view(1, -1)``)."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        return self.fc(self.conv(x).view(1, -1))


def test_a_program_with_its_batch_baked_in_runs_in_chunks(tmp_path):
    torch.manual_seed(0)
    m = _BakedBatch().eval()
    path = tmp_path / "baked.pt2"
    torch.export.save(torch.export.export(m, (torch.randn(1, 3, 8, 8),)), str(path))
    model, shape = load_export(path)
    assert shape == (3, 8, 8) and model.batch == 1  # the free-batch check failed: chunks of 1
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        want = torch.cat([m(x[i:i + 1]) for i in range(5)])
        assert torch.allclose(model(x), want, atol=1e-5)
