"""Where a job's forward passes run, and how a model larger than the accelerator still runs there.

``resolve_device`` turns the job's ``device`` ("auto", "cpu", "cuda", "cuda:1", "mps") into a
torch device: "auto" is the GPU Ray granted the task (Ray sets ``CUDA_VISIBLE_DEVICES``, so torch
sees only that one), else the CPU. A device that is not there is refused with the reason, before
any work.

``place_model`` puts the model there. When its weights do not fit the accelerator's free memory
(or ``offload=True``), the trunk of repeated blocks stays in host memory and each block visits the
device only while it runs (a pre-forward hook moves it in, a forward hook moves it back): at most
one block's weights are on the device at a time, plus the embeddings, the head and the
activations, which is how a 7B model is planned on one 24 GB GPU. Parameters keep their identity
(``Module.to`` replaces ``param.data``), so the engine's weight swaps work unchanged.

Batches follow the model: ``Task.prepare`` moves every tensor to ``model_device(model)``."""
from __future__ import annotations

import weakref

import torch
from torch import nn

from proxies.blockcache import find_trunk
from search.spec import DEVICE_PATTERN

_PLACED: "weakref.WeakKeyDictionary[nn.Module, torch.device]" = weakref.WeakKeyDictionary()
_HOOKS: "weakref.WeakKeyDictionary[nn.Module, list]" = weakref.WeakKeyDictionary()
FIT_FRACTION = 0.8  # the weights may take this share of the device's free memory before blocks are offloaded


class DeviceError(ValueError):
    """The job asked for a device this worker does not have."""


def resolve_device(name: str | None) -> torch.device:
    name = (name or "auto").strip().lower()
    if not DEVICE_PATTERN.match(name):
        raise DeviceError(f"device {name!r} is not one of auto, cpu, cuda, cuda:N, mps")
    if name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r}: this worker has no CUDA GPU (torch {torch.__version__}, "
                              "torch.cuda.is_available() is False); use device 'cpu' or 'auto'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"device {name!r}: this worker sees {torch.cuda.device_count()} CUDA GPU(s)")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise DeviceError(f"device {name!r}: MPS is not available on this machine; use 'cpu'")
    return dev


def model_device(model: nn.Module) -> torch.device:
    """The device the model's inputs go to (CPU unless ``place_model`` put it elsewhere)."""
    return _PLACED.get(model, torch.device("cpu"))


def weight_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters()) + \
        sum(b.numel() * b.element_size() for b in model.buffers())


def _fits(model: nn.Module, device: torch.device) -> bool:
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return weight_bytes(model) <= FIT_FRACTION * free


def place_model(model: nn.Module, device: torch.device, offload: bool | None = None) -> dict:
    """Move ``model`` to ``device`` (whole, or with its trunk's blocks visiting one at a time).
    ``offload=None`` decides by free memory; on the CPU there is nothing to offload. Returns a
    record for the policy (device, offload, blocks)."""
    for h in _HOOKS.pop(model, []):  # placed before: the old visits end here
        h.remove()
    trunk = find_trunk(model)
    if offload is None:  # on the CPU there is nothing to save; an explicit True still streams (tests)
        offload = device.type != "cpu" and not _fits(model, device)
    if offload and trunk is None:
        raise DeviceError(f"the model does not fit {device} and has no trunk of repeated blocks to stream "
                          "through it one at a time; use device 'cpu'")
    if not offload:
        model.to(device)
        _PLACED[model] = device
        return {"device": str(device), "offload": False}
    name, blocks = trunk
    host = torch.device("cpu")
    # everything but the trunk lives on the device; the blocks stay on the host between visits
    saved = list(blocks)
    for j in range(len(blocks)):
        blocks[j] = nn.Identity()
    model.to(device)

    def enter(m: nn.Module, args) -> None:  # a hook that returned the module would replace the inputs
        m.to(device)

    def leave(m: nn.Module, args, out) -> None:
        m.to(host)

    hooks = []
    for j, blk in enumerate(saved):
        blocks[j] = blk.to(host)
        hooks.append(blk.register_forward_pre_hook(enter))
        hooks.append(blk.register_forward_hook(leave))
    _HOOKS[model] = hooks
    _PLACED[model] = device
    return {"device": str(device), "offload": True, "trunk": name, "blocks": len(saved)}


def to_device(batch: dict, device: torch.device) -> dict:
    """The batch with every tensor on ``device`` (other values as they are)."""
    if device.type == "cpu" and all(not isinstance(v, torch.Tensor) or v.device.type == "cpu" for v in batch.values()):
        return batch
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
