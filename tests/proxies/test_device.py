"""Device choice and block streaming, on the CPU CI has: the same code paths a GPU job takes
(resolution, placement, batches following the model, hooks that move one block at a time)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from proxies.device import DeviceError, model_device, place_model, resolve_device, to_device
from proxies.tasks import ClassifierTask


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(6, 8)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(8, 8), nn.ReLU()) for _ in range(3))
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = self.inp(x)
        for b in self.blocks:
            x = b(x)
        return self.head(x)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None) == resolve_device("auto")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DeviceError, match="not one of auto, cpu, cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            resolve_device("cuda:0")


def test_placed_model_takes_its_batches_with_it():
    net = Net()
    assert place_model(net, torch.device("cpu")) == {"device": "cpu", "offload": False}
    assert model_device(net) == torch.device("cpu")
    b = {"x": torch.randn(5, 6), "y": torch.zeros(5, dtype=torch.long), "name": "kept"}
    assert to_device(b, torch.device("cpu")) is b  # nothing to move: the same dict
    prepared = ClassifierTask().prepare(net, [b])[0]
    assert prepared["x"].device == model_device(net) and prepared["name"] == "kept"
    assert "ref_logits" in prepared


def test_streamed_blocks_visit_the_device_one_at_a_time_with_identical_outputs():
    net = Net()
    x = torch.randn(5, 6)
    want = net(x)
    rec = place_model(net, torch.device("cpu"), offload=True)
    assert rec == {"device": "cpu", "offload": True, "trunk": "blocks", "blocks": 3}
    events = []
    for j, blk in enumerate(net.blocks):
        def spy(*a, j=j, blk=blk, **k):
            events.append((j, str(a[0])))
            return nn.Module.to(blk, *a, **k)
        blk.to = spy
        blk.register_forward_pre_hook(lambda m, a, j=j: events.append((j, "runs")))
    params = [p for p in net.parameters()]
    torch.testing.assert_close(net(x), want)
    # each block moves in, runs and moves out before the next one moves in: at most one resident
    assert events == [(j, e) for j in range(3) for e in ("cpu", "runs", "cpu")]
    assert [p for p in net.parameters()] == params  # the engine's weight swaps still reach them
    assert place_model(net, torch.device("cpu")) == {"device": "cpu", "offload": False}  # re-placing drops the hooks
    n_hooks = sum(len(b._forward_pre_hooks) for b in net.blocks)
    assert n_hooks == 3  # only this test's spies remain


def test_a_model_without_a_trunk_cannot_be_streamed():
    with pytest.raises(DeviceError, match="no trunk of repeated blocks"):
        place_model(nn.Linear(4, 4), torch.device("cpu"), offload=True)
