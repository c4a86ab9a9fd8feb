"""Layer discovery (DESIGN §2): which weights are layers, in model order, with the numbers the
cost model needs; tie groups by preset."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from proxies.discovery import discover_layers
from search.layers import LayerInfo, find_tie_groups


class Net(nn.Module):
    """Embedding → Conv1d → Conv2d → depthwise → grouped → Linear → lm_head, on 8×8 'images'."""

    def __init__(self, tied: bool = False):
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.c1d = nn.Conv1d(16, 8, 3, padding=1)          # (8, 16, 3)
        self.conv = nn.Conv2d(1, 8, 3, padding=1)          # (8, 1, 3, 3)  out 8×8
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)  # (8, 1, 3, 3)  out 8×8
        self.grouped = nn.Conv2d(8, 12, 3, stride=2, padding=1, groups=4)  # (12, 2, 3, 3) out 4×4
        self.fc = nn.Linear(12 * 16, 20)
        self.lm_head = nn.Linear(16, 50, bias=False)
        if tied:
            self.lm_head.weight = self.embed.weight
        self.act = nn.ReLU()

    def forward(self, tokens: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        e = self.embed(tokens)                       # (n, T, 16)
        seq = self.act(self.c1d(e.transpose(1, 2)))  # (n, 8, T)
        x = self.grouped(self.act(self.dw(self.act(self.conv(image)))))
        return self.fc(x.flatten(1)).sum() + seq.sum() + self.lm_head(e).sum()


def example(model: nn.Module) -> None:
    model(torch.zeros(1, 10, dtype=torch.long), torch.zeros(1, 1, 8, 8))


def by_name(pairs) -> dict[str, LayerInfo]:
    return {info.name: info for info, _ in pairs}


def test_default_excludes_embeddings_and_head_and_keeps_model_order():
    pairs = discover_layers(Net())
    assert [i.name for i, _ in pairs] == ["c1d", "conv", "dw", "grouped", "fc"]
    assert [i.kind for i, _ in pairs] == ["Conv1d", "Conv2d", "Conv2d", "Conv2d", "Linear"]


def test_modules_are_the_models_own():
    net = Net()
    pairs = discover_layers(net)
    for info, module in pairs:
        assert module is net.get_submodule(info.name)


def test_shapes_numel_and_reduction_dim():
    L = by_name(discover_layers(Net()))
    assert L["c1d"].shape == (8, 16, 3) and L["c1d"].numel == 384 and L["c1d"].in_features == 16 * 3
    assert L["conv"].shape == (8, 1, 3, 3) and L["conv"].numel == 72 and L["conv"].in_features == 9
    # depthwise: in/groups = 1 channel per filter
    assert L["dw"].numel == 72 and L["dw"].in_features == 1 * 9
    # grouped: in/groups = 8/4 = 2 channels per filter
    assert L["grouped"].shape == (12, 2, 3, 3) and L["grouped"].numel == 216 and L["grouped"].in_features == 18
    assert L["fc"].shape == (20, 192) and L["fc"].numel == 3840 and L["fc"].in_features == 192
    for info in L.values():
        assert info.numel % info.in_features == 0


def test_macs_without_example_count_one_position():
    L = by_name(discover_layers(Net()))
    assert all(L[n].macs == L[n].numel for n in L)


def test_macs_with_example_use_output_spatial_size():
    L = by_name(discover_layers(Net(), example))
    assert L["c1d"].macs == 384 * 10      # output length T = 10
    assert L["conv"].macs == 72 * 64      # 8×8 output
    assert L["dw"].macs == 72 * 64
    assert L["grouped"].macs == 216 * 16  # stride 2 → 4×4
    assert L["fc"].macs == 3840           # Linear: per sample


def test_example_leaves_no_hooks_behind():
    net = Net()
    discover_layers(net, example)
    assert all(not m._forward_hooks for m in net.modules())


def test_embeddings_and_head_on_request():
    L = by_name(discover_layers(Net(), example, include_embeddings=True, include_head=True))
    assert list(L) == ["embed", "c1d", "conv", "dw", "grouped", "fc", "lm_head"]
    assert L["embed"].kind == "Embedding" and L["embed"].macs == 0 and L["embed"].in_features == 16
    assert L["lm_head"].kind == "Linear" and L["lm_head"].shape == (50, 16)
    assert [i.name for i, _ in discover_layers(Net(), include_embeddings=True)][0] == "embed"
    assert "embed" not in by_name(discover_layers(Net(), include_head=True))
    assert "lm_head" in by_name(discover_layers(Net(), include_head=True))


def test_tied_weight_is_listed_once():
    net = Net(tied=True)
    assert net.lm_head.weight is net.embed.weight
    names = [i.name for i, _ in discover_layers(net, include_embeddings=True, include_head=True)]
    assert names.count("embed") + names.count("lm_head") == 1
    assert len(names) == 6


def test_hf_get_output_embeddings_marks_the_head():
    class WithHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(4, 4)
            self.proj_out = nn.Linear(4, 9)

        def get_output_embeddings(self):
            return self.proj_out

    assert [i.name for i, _ in discover_layers(WithHead())] == ["body"]
    assert [i.name for i, _ in discover_layers(WithHead(), include_head=True)] == ["body", "proj_out"]


def test_hf_conv1d_reduction_dim_is_its_first_dim():
    pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    class GPT2ish(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_attn = Conv1D(3 * 8, 8)   # nf=24 outputs, nx=8 inputs: weight (8, 24)
            self.c_proj = Conv1D(8, 8)

    L = by_name(discover_layers(GPT2ish()))
    assert list(L) == ["c_attn", "c_proj"]
    assert L["c_attn"].kind == "Conv1D"
    assert L["c_attn"].shape == (8, 24) and L["c_attn"].in_features == 8 and L["c_attn"].numel == 192
    assert L["c_attn"].macs == 192


def test_no_quantizable_layers():
    assert discover_layers(nn.Sequential(nn.ReLU(), nn.LayerNorm(4))) == []


# ---------------------------------------------------------------- tie groups


def llama_layers(n_blocks: int = 2) -> list[LayerInfo]:
    out = []
    for b in range(n_blocks):
        for leaf in ("q_proj", "k_proj", "v_proj", "o_proj"):
            out.append(LayerInfo(f"model.layers.{b}.self_attn.{leaf}", "Linear", (8, 8), 64, 8, 64))
        for leaf in ("gate_proj", "up_proj", "down_proj"):
            out.append(LayerInfo(f"model.layers.{b}.mlp.{leaf}", "Linear", (8, 8), 64, 8, 64))
    return out


def test_qkv_ties_siblings_per_block():
    layers = llama_layers()
    ties = find_tie_groups(layers, ["qkv"])
    assert ties.names(layers) == [["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
                                   "model.layers.0.self_attn.v_proj"],
                                  ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.k_proj",
                                   "model.layers.1.self_attn.v_proj"]]
    assert ties.groups == [[0, 1, 2], [7, 8, 9]]


def test_gate_up_and_both_presets():
    layers = llama_layers(1)
    assert find_tie_groups(layers, ["gate_up"]).groups == [[4, 5]]
    assert find_tie_groups(layers, ["qkv", "gate_up"]).groups == [[0, 1, 2], [4, 5]]
    assert find_tie_groups(layers, []).groups == []


def test_bert_names_and_no_cross_block_ties():
    layers = [LayerInfo(f"encoder.layer.{b}.attention.self.{leaf}", "Linear", (4, 4), 16, 4, 16)
              for b in range(2) for leaf in ("query", "key", "value")]
    assert find_tie_groups(layers, ["qkv"]).groups == [[0, 1, 2], [3, 4, 5]]
    # a lone q_proj (its siblings excluded) forms no group
    lone = [LayerInfo("a.q_proj", "Linear", (4, 4), 16, 4, 16), LayerInfo("b.k_proj", "Linear", (4, 4), 16, 4, 16)]
    assert find_tie_groups(lone, ["qkv"]).groups == []


def test_unknown_tie_preset_names_the_choices():
    with pytest.raises(ValueError, match="unknown tie preset 'qk'.*gate_up.*qkv"):
        find_tie_groups(llama_layers(1), ["qk"])


class SamePadConv(nn.Conv2d):
    """The shape of EfficientNet ports' Conv2dStaticSamePadding: a Conv2d subclass that pads."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1):
        super().__init__(cin, cout, k, stride=stride, bias=False)
        self.pad = nn.ZeroPad2d((k - 1) // 2)

    def forward(self, x):
        return self._conv_forward(self.pad(x), self.weight, self.bias)


class Dense(nn.Linear):
    pass


def test_subclasses_of_conv_and_linear_are_layers_of_their_base_kind():
    net = nn.Sequential(SamePadConv(3, 8, 3), nn.BatchNorm2d(8), SamePadConv(8, 8, 3, stride=2), nn.Flatten(),
                        Dense(8 * 4 * 4, 10))
    L = by_name(discover_layers(net, lambda m: m(torch.zeros(1, 3, 8, 8))))
    assert [L[n].kind for n in ("0", "2", "4")] == ["Conv2d", "Conv2d", "Linear"]
    assert L["0"].macs == L["0"].numel * 64 and L["2"].macs == L["2"].numel * 16  # real output positions


def test_torchscript_layers_are_found_by_what_their_graph_does():
    """Scripted, a Conv2d subclass keeps its own class name (``original_name``), which used to
    hide it; its graph runs aten::conv2d on its own weight, so it is a Conv2d. The Sequential
    around it runs convs of its children, not its own: not a layer."""
    import warnings
    net = nn.Sequential(SamePadConv(3, 8, 3), nn.BatchNorm2d(8), SamePadConv(8, 8, 3, stride=2), nn.Flatten(),
                        Dense(8 * 4 * 4, 10), nn.Linear(10, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(net.eval())
    L = by_name(discover_layers(scripted))
    assert sorted(L) == ["0", "2", "4", "5"]
    assert [L[n].kind for n in ("0", "2", "4", "5")] == ["Conv2d", "Conv2d", "Linear", "Linear"]
    assert L["2"].shape == (8, 8, 3, 3) and L["4"].in_features == 128


def test_torchscript_conv_macs_use_real_output_positions():
    """Scripted or traced, conv MACs come from the output of each conv op (a graph probe), as
    for the eager model, so ``bops`` budgets are right; convs once counted one position."""
    import warnings
    net = nn.Sequential(SamePadConv(3, 8, 3), nn.BatchNorm2d(8), SamePadConv(8, 8, 3, stride=2), nn.Flatten(),
                        Dense(8 * 4 * 4, 10)).eval()
    run = lambda m: m(torch.zeros(1, 3, 8, 8))  # noqa: E731
    want = {i.name: i.macs for i, _ in discover_layers(net, run)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for scripted in (torch.jit.script(net), torch.jit.trace(net, torch.zeros(1, 3, 8, 8))):
            got = {i.name: i.macs for i, _ in discover_layers(scripted, run)}
            assert got == want
    assert want["0"] == 8 * 27 * 64 and want["2"] == 8 * 72 * 16
