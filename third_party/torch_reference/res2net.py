"""Res2Net v1b 26w4s (deep stem, avg-down shortcut), as CTO's `Res2Net.py` builds it.

State-dict keys, shapes and order equal `res2net50_v1b_26w_4s` (and timm's `res2net50d`),
including the unused `fc` head. `forward` returns the four stage outputs (x1, x2, x3, x4).
No pretrained weights are downloaded.
"""
import math
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

LAYERS_50 = (3, 4, 6, 3)
LAYERS_101 = (3, 4, 23, 3)


class Bottle2neck(nn.Module):
  """Res2Net bottleneck: 1x1 -> `scale` chunks of 3x3 convs -> 1x1, plus the shortcut.

  A 'stage' block (first of a layer) convolves the first `scale - 1` chunks independently and
  average-pools the last one (3x3, padding counted); a 'normal' block feeds each chunk's output
  into the next chunk and passes the last chunk through unchanged. The stride sits on the 3x3s.
  """
  expansion = 4

  def __init__(self, inplanes: int, planes: int, stride: int = 1,
               downsample: Optional[nn.Module] = None, base_width: int = 26, scale: int = 4,
               stype: str = 'normal'):
    super().__init__()
    if stype not in ('normal', 'stage'):
      raise ValueError(f"Bottle2neck stype must be 'normal' or 'stage', got {stype!r}")
    if scale < 2:
      raise ValueError(f'Bottle2neck scale must be >= 2, got {scale}')
    width = int(math.floor(planes * (base_width / 64.0)))
    self.conv1 = nn.Conv2d(inplanes, width * scale, kernel_size=1, bias=False)
    self.bn1 = nn.BatchNorm2d(width * scale)
    self.nums = scale - 1
    if stype == 'stage':
      self.pool = nn.AvgPool2d(kernel_size=3, stride=stride, padding=1)
    self.convs = nn.ModuleList([
        nn.Conv2d(width, width, kernel_size=3, stride=stride, padding=1, bias=False)
        for _ in range(self.nums)])
    self.bns = nn.ModuleList([nn.BatchNorm2d(width) for _ in range(self.nums)])
    self.conv3 = nn.Conv2d(width * scale, planes * self.expansion, kernel_size=1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * self.expansion)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample
    self.stype = stype
    self.scale = scale
    self.width = width

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    out = self.relu(self.bn1(self.conv1(x)))
    chunks = torch.split(out, self.width, dim=1)
    outputs = []
    sp = None
    for i in range(self.nums):
      sp = chunks[i] if i == 0 or self.stype == 'stage' else sp + chunks[i]
      sp = self.relu(self.bns[i](self.convs[i](sp)))
      outputs.append(sp)
    last = chunks[self.nums]
    outputs.append(self.pool(last) if self.stype == 'stage' else last)
    out = self.bn3(self.conv3(torch.cat(outputs, dim=1)))
    residual = x if self.downsample is None else self.downsample(x)
    return self.relu(out + residual)


class Res2Net(nn.Module):
  """Res2Net v1b backbone with a deep 3-conv stem; returns the four stage outputs.

  `avgpool` and `fc` exist (so the state dict matches the ImageNet checkpoints) but are not used.
  Convolutions are initialised kaiming_normal(fan_out, relu), BatchNorm to weight 1 / bias 0.
  """

  def __init__(self, layers: Sequence[int] = LAYERS_50, base_width: int = 26, scale: int = 4,
               num_classes: int = 1000):
    super().__init__()
    if len(layers) != 4:
      raise ValueError(f'Res2Net layers must list 4 block counts, got {tuple(layers)}')
    self.inplanes = 64
    self.base_width = base_width
    self.scale = scale
    self.conv1 = nn.Sequential(
        nn.Conv2d(3, 32, 3, 2, 1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(inplace=True),
        nn.Conv2d(32, 32, 3, 1, 1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(inplace=True),
        nn.Conv2d(32, 64, 3, 1, 1, bias=False),
    )
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU()
    self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    self.layer1 = self._make_layer(64, layers[0])
    self.layer2 = self._make_layer(128, layers[1], stride=2)
    self.layer3 = self._make_layer(256, layers[2], stride=2)
    self.layer4 = self._make_layer(512, layers[3], stride=2)
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Linear(512 * Bottle2neck.expansion, num_classes)

    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
      elif isinstance(m, nn.BatchNorm2d):
        nn.init.constant_(m.weight, 1)
        nn.init.constant_(m.bias, 0)

  def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
    out_channels = planes * Bottle2neck.expansion
    downsample = None
    if stride != 1 or self.inplanes != out_channels:
      downsample = nn.Sequential(
          nn.AvgPool2d(kernel_size=stride, stride=stride, ceil_mode=True,
                       count_include_pad=False),
          nn.Conv2d(self.inplanes, out_channels, kernel_size=1, stride=1, bias=False),
          nn.BatchNorm2d(out_channels),
      )
    layers = [Bottle2neck(self.inplanes, planes, stride, downsample=downsample,
                          base_width=self.base_width, scale=self.scale, stype='stage')]
    self.inplanes = out_channels
    layers += [Bottle2neck(self.inplanes, planes, base_width=self.base_width, scale=self.scale)
               for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x1 = self.layer1(x)
    x2 = self.layer2(x1)
    x3 = self.layer3(x2)
    x4 = self.layer4(x3)
    return x1, x2, x3, x4


def res2net50_v1b_26w_4s() -> Res2Net:
  """Res2Net-50 v1b 26w4s (CTO's backbone), randomly initialised."""
  return Res2Net(LAYERS_50, base_width=26, scale=4)


def res2net101_v1b_26w_4s() -> Res2Net:
  """Res2Net-101 v1b 26w4s, randomly initialised."""
  return Res2Net(LAYERS_101, base_width=26, scale=4)
