"""Structural Guidance Extractor (SGE) as in the official SGDC repository's `SGE.py`.

Keys equal `reference/keys_sge.tsv`. The Sobel operators are dense ch->ch convolutions whose
every (out, in) kernel is the same 3x3 Sobel, stored as frozen parameters
(`requires_grad=False`), so every output channel is the Sobel of the channel sum. The gradient
magnitude uses a plain `sqrt` without epsilon, as upstream.
"""
from typing import Tuple

import torch
from torch import nn
from torch.nn import functional as F

SOBEL_X = ((1., 0., -1.), (2., 0., -2.), (1., 0., -1.))
SOBEL_Y = ((1., 2., 1.), (0., 0., 0.), (-1., -2., -1.))


class ConvBNReLU(nn.Module):
  """Conv (no bias) -> BatchNorm -> ReLU."""

  def __init__(self, in_chan: int, out_chan: int, ks: int = 3, stride: int = 1,
               padding: int = 1, bias: bool = False):
    super().__init__()
    self.conv = nn.Conv2d(in_chan, out_chan, kernel_size=ks, stride=stride, padding=padding,
                          bias=bias)
    self.bn = nn.BatchNorm2d(out_chan)
    self.relu = nn.ReLU(inplace=True)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.relu(self.bn(self.conv(x)))


class BottleneckRefiner(nn.Module):
  """Residual bottleneck `ReLU(x + BN(1x1(ReLU(BN(3x3(ReLU(BN(1x1(x))))))))`, bias-free convs."""

  def __init__(self, channels: int, reduction_ratio: int = 4):
    super().__init__()
    reduced = channels // reduction_ratio
    self.refine = nn.Sequential(
        nn.Conv2d(channels, reduced, 1, bias=False),
        nn.BatchNorm2d(reduced),
        nn.ReLU(inplace=True),
        nn.Conv2d(reduced, reduced, 3, padding=1, bias=False),
        nn.BatchNorm2d(reduced),
        nn.ReLU(inplace=True),
        nn.Conv2d(reduced, channels, 1, bias=False),
        nn.BatchNorm2d(channels),
    )
    self.relu = nn.ReLU(inplace=True)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.relu(x + self.refine(x))


def dense_sobel_conv(channels: int, kernel: Tuple[Tuple[float, ...], ...]) -> nn.Conv2d:
  """A channels->channels 3x3 conv whose every (out, in) slice is `kernel`, frozen."""
  conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
  weight = torch.tensor(kernel, dtype=torch.float32).expand(channels, channels, 3, 3).clone()
  conv.weight = nn.Parameter(weight, requires_grad=False)
  return conv


class SGE(nn.Module):
  """Structural Guidance Extractor: (x4, x1) -> (edge logits, guidance), both at x1's size.

  Both streams are projected by 1x1 ConvBNReLU, Sobel-modulated (`sigmoid(|grad|) * s`) and
  refined at their own resolution; the deep stream is then resized bilinearly to x1's size,
  concatenated first with the shallow one, fused by a 3x3 ConvBNReLU and read out by two
  bias-free 1x1 convs (1 edge channel, `guide_ch` guidance channels, no activation).
  """

  def __init__(self, s4_in: int = 2048, s1_in: int = 256, mid: int = 256, guide_ch: int = 16,
               bottleneck: int = 256, reduction_ratio: int = 4):
    super().__init__()
    self.s4_proj = ConvBNReLU(s4_in, bottleneck, ks=1, padding=0)
    self.s1_proj = ConvBNReLU(s1_in, bottleneck, ks=1, padding=0)
    self.sobel_x = dense_sobel_conv(bottleneck, SOBEL_X)
    self.sobel_y = dense_sobel_conv(bottleneck, SOBEL_Y)
    self.refine4 = BottleneckRefiner(bottleneck, reduction_ratio)
    self.refine1 = BottleneckRefiner(bottleneck, reduction_ratio)
    self.fuse = ConvBNReLU(bottleneck * 2, mid)
    self.out_edge_map = nn.Conv2d(mid, 1, 1, bias=False)
    self.out_guidance = nn.Conv2d(mid, guide_ch, 1, bias=False)

  def _apply_sobel(self, x: torch.Tensor, refiner: nn.Module) -> torch.Tensor:
    gx = self.sobel_x(x)
    gy = self.sobel_y(x)
    magnitude = torch.sqrt(gx ** 2 + gy ** 2)
    return refiner(torch.sigmoid(magnitude) * x)

  def forward(self, x4: torch.Tensor, x1: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    s4 = self._apply_sobel(self.s4_proj(x4), self.refine4)
    s1 = self._apply_sobel(self.s1_proj(x1), self.refine1)
    s4 = F.interpolate(s4, size=s1.shape[2:], mode='bilinear', align_corners=False)
    fused = self.fuse(torch.cat([s4, s1], dim=1))
    return self.out_edge_map(fused), self.out_guidance(fused)
