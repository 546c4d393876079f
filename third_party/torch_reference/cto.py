"""The vanilla CTO network (`CTOTrainer/network/CTO_net.py`, class `CTO`) and its blocks.

`CTO(2).state_dict()` has exactly the keys of `reference/keys_cto.tsv`, including the modules
that upstream defines but whose results never reach the outputs (`fft`, `sobel_x2/y2/x3/y3`,
`erb_db_*`, `reduce5`, `dm4`, `predictor4`, `resnet.fc`). The backbone is randomly initialised
(upstream downloads ImageNet weights in the constructor).
"""
import math
from typing import List, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from third_party.torch_reference.res2net import res2net50_v1b_26w_4s
from third_party.torch_reference.sge import SOBEL_X, SOBEL_Y

# Upstream PatchTrans patch sizes (square), one per quarter of the 256 channels.
DEFAULT_PATCH_SIZES = (32, 16, 8, 4)


class ConvBNR(nn.Module):
  """Conv (no bias, padding = dilation) -> BatchNorm -> ReLU, as `block.{0,1,2}`."""

  def __init__(self, inplanes: int, planes: int, kernel_size: int = 3, stride: int = 1,
               dilation: int = 1, bias: bool = False):
    super().__init__()
    self.block = nn.Sequential(
        nn.Conv2d(inplanes, planes, kernel_size, stride=stride, padding=dilation,
                  dilation=dilation, bias=bias),
        nn.BatchNorm2d(planes),
        nn.ReLU(inplace=True),
    )

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.block(x)


class Conv1x1(nn.Module):
  """1x1 conv (with bias) -> BatchNorm -> ReLU."""

  def __init__(self, inplanes: int, planes: int):
    super().__init__()
    self.conv = nn.Conv2d(inplanes, planes, 1)
    self.bn = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU(inplace=True)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.relu(self.bn(self.conv(x)))


class BasicConv2d(nn.Module):
  """Conv (no bias) -> BatchNorm. Upstream also holds a ReLU that its forward never applies."""

  def __init__(self, in_planes: int, out_planes: int, kernel_size: int, stride: int = 1,
               padding: int = 0, dilation: int = 1):
    super().__init__()
    self.conv = nn.Conv2d(in_planes, out_planes, kernel_size=kernel_size, stride=stride,
                          padding=padding, dilation=dilation, bias=False)
    self.bn = nn.BatchNorm2d(out_planes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.bn(self.conv(x))


class EAM(nn.Module):
  """CTO's edge module (the second, effective definition): (s4, s1) -> 1-channel edge logits."""

  def __init__(self):
    super().__init__()
    self.reduce1 = Conv1x1(256, 64)
    self.reduce4 = Conv1x1(2048, 256)
    self.block = nn.Sequential(
        ConvBNR(256 + 64, 256, 3),
        ConvBNR(256, 256, 3),
        nn.Conv2d(256, 1, 1))

  def forward(self, x4: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    x1 = self.reduce1(x1)
    x4 = F.interpolate(self.reduce4(x4), x1.shape[2:], mode='bilinear', align_corners=False)
    return self.block(torch.cat((x4, x1), dim=1))


class DM(nn.Module):
  """Decoder module: fuses a reduced skip feature `xr` with the coarser decoder feature `d`.

  out = ra2_conv4(relu(ra2_conv3(relu(ra2_conv2((1 - sigmoid(d_up)) * xr)))))
        + d_up + predict3(cat[xr, d_up]), where d_up is `d` resized bilinearly to xr's size and
  the two 1-channel maps broadcast over d_up's 64 channels.
  """

  def __init__(self):
    super().__init__()
    self.predict3 = nn.Sequential(
        nn.Conv2d(128, 64, kernel_size=3, padding=1), nn.BatchNorm2d(64), nn.PReLU(),
        nn.Conv2d(64, 64, kernel_size=3, padding=1), nn.BatchNorm2d(64), nn.PReLU(),
        nn.Conv2d(64, 1, kernel_size=1),
    )
    self.ra2_conv2 = BasicConv2d(64, 64, kernel_size=3, padding=1)
    self.ra2_conv3 = BasicConv2d(64, 64, kernel_size=3, padding=1)
    self.ra2_conv4 = BasicConv2d(64, 1, kernel_size=3, padding=1)

  def forward(self, xr: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    d_up = F.interpolate(d, xr.shape[2:], mode='bilinear', align_corners=False)
    refined = self.predict3(torch.cat([xr, d_up], dim=1))
    x = (1 - torch.sigmoid(d_up)) * xr
    x = F.relu(self.ra2_conv2(x))
    x = F.relu(self.ra2_conv3(x))
    return self.ra2_conv4(x) + d_up + refined


class PositionAttention(nn.Module):
  """DANet position attention (`_PositionAttentionModule`): `alpha * (D S^T) + x`, alpha = 0."""

  def __init__(self, in_channels: int):
    super().__init__()
    self.conv_b = nn.Conv2d(in_channels, in_channels // 8, 1)
    self.conv_c = nn.Conv2d(in_channels, in_channels // 8, 1)
    self.conv_d = nn.Conv2d(in_channels, in_channels, 1)
    self.alpha = nn.Parameter(torch.zeros(1))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    b, _, h, w = x.shape
    feat_b = self.conv_b(x).view(b, -1, h * w).permute(0, 2, 1)
    feat_c = self.conv_c(x).view(b, -1, h * w)
    attention = torch.softmax(torch.bmm(feat_b, feat_c), dim=-1)
    feat_d = self.conv_d(x).view(b, -1, h * w)
    feat_e = torch.bmm(feat_d, attention.permute(0, 2, 1)).view(b, -1, h, w)
    return self.alpha * feat_e + x


class ChannelAttention(nn.Module):
  """DANet channel attention (`_ChannelAttentionModule`): `beta * softmax(max - XX^T) X + x`."""

  def __init__(self):
    super().__init__()
    self.beta = nn.Parameter(torch.zeros(1))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    b, _, h, w = x.shape
    feat_a = x.view(b, -1, h * w)
    affinity = torch.bmm(feat_a, feat_a.permute(0, 2, 1))
    affinity = torch.max(affinity, dim=-1, keepdim=True)[0].expand_as(affinity) - affinity
    feat_e = torch.bmm(torch.softmax(affinity, dim=-1), feat_a).view(b, -1, h, w)
    return self.beta * feat_e + x


class DAHead(nn.Module):
  """Dual-attention head (`_DAHead` with aux=False); returns the fused output tensor."""

  def __init__(self, in_channels: int, nclass: int):
    super().__init__()
    inter = in_channels // 4

    def conv_bn_relu(cin: int) -> nn.Sequential:
      return nn.Sequential(nn.Conv2d(cin, inter, 3, padding=1, bias=False),
                           nn.BatchNorm2d(inter), nn.ReLU(True))

    self.conv_p1 = conv_bn_relu(in_channels)
    self.conv_c1 = conv_bn_relu(in_channels)
    self.pam = PositionAttention(inter)
    self.cam = ChannelAttention()
    self.conv_p2 = conv_bn_relu(inter)
    self.conv_c2 = conv_bn_relu(inter)
    self.out = nn.Sequential(nn.Dropout(0.1), nn.Conv2d(inter, nclass, 1))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    feat_p = self.conv_p2(self.pam(self.conv_p1(x)))
    feat_c = self.conv_c2(self.cam(self.conv_c1(x)))
    return self.out(feat_p + feat_c)


def to_patch_tokens(x: torch.Tensor, patch: int) -> torch.Tensor:
  """(B, C, H, W) -> (B, (H/p)(W/p), C*p*p): row-major patches, tokens flattened (c, row, col)."""
  b, c, h, w = x.shape
  x = x.view(b, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 1, 3, 5)
  return x.reshape(b, (h // patch) * (w // patch), c * patch * patch)


def from_patch_tokens(tokens: torch.Tensor, channels: int, patch: int, height: int,
                      width: int) -> torch.Tensor:
  """Exact inverse of `to_patch_tokens`."""
  b = tokens.shape[0]
  x = tokens.view(b, height // patch, width // patch, channels, patch, patch)
  return x.permute(0, 3, 1, 4, 2, 5).reshape(b, channels, height, width)


class MultiHeadedAttention(nn.Module):
  """Multi-scale patch attention: channel quarter i attends over patches of size patch_sizes[i].

  Each chunk is one head whose tokens are whole p x p patches (dimension C/n * p * p);
  `softmax(Q K^T / sqrt(token_dim)) V`, scattered back, then conv3x3 -> BN -> LeakyReLU(0.2).
  """

  def __init__(self, patch_sizes: Sequence[int], d_model: int):
    super().__init__()
    if d_model % len(patch_sizes):
      raise ValueError(f'MultiHeadedAttention d_model {d_model} is not divisible by the number '
                       f'of patch sizes {len(patch_sizes)}')
    self.patch_sizes = tuple(patch_sizes)
    self.query_embedding = nn.Conv2d(d_model, d_model, kernel_size=1, padding=0)
    self.value_embedding = nn.Conv2d(d_model, d_model, kernel_size=1, padding=0)
    self.key_embedding = nn.Conv2d(d_model, d_model, kernel_size=1, padding=0)
    self.output_linear = nn.Sequential(
        nn.Conv2d(d_model, d_model, kernel_size=3, padding=1),
        nn.BatchNorm2d(d_model),
        nn.LeakyReLU(0.2, inplace=True),
    )

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    _, c, h, w = x.shape
    for patch in self.patch_sizes:
      if h % patch or w % patch:
        raise ValueError(f'MultiHeadedAttention: feature map {h}x{w} is not divisible by patch '
                         f'size {patch} (patch_sizes={self.patch_sizes})')
    d_k = c // len(self.patch_sizes)
    n = len(self.patch_sizes)
    outputs = []
    for patch, query, key, value in zip(self.patch_sizes,
                                        torch.chunk(self.query_embedding(x), n, dim=1),
                                        torch.chunk(self.key_embedding(x), n, dim=1),
                                        torch.chunk(self.value_embedding(x), n, dim=1)):
      query = to_patch_tokens(query, patch)
      key = to_patch_tokens(key, patch)
      value = to_patch_tokens(value, patch)
      scores = torch.matmul(query, key.transpose(-2, -1)) / math.sqrt(query.size(-1))
      attended = torch.matmul(F.softmax(scores, dim=-1), value)
      outputs.append(from_patch_tokens(attended, d_k, patch, h, w))
    return self.output_linear(torch.cat(outputs, dim=1))


class FeedForward2D(nn.Module):
  """Conv3x3 (dilation 2) -> BN -> LeakyReLU(0.2) -> Conv3x3 -> BN -> LeakyReLU(0.2)."""

  def __init__(self, in_channel: int, out_channel: int):
    super().__init__()
    self.conv = nn.Sequential(
        nn.Conv2d(in_channel, out_channel, kernel_size=3, padding=2, dilation=2),
        nn.BatchNorm2d(out_channel),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(out_channel, out_channel, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_channel),
        nn.LeakyReLU(0.2, inplace=True),
    )

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.conv(x)


class TransformerBlock(nn.Module):
  """`out = x + attention(x); out = out + feed_forward(out)` (no LayerNorm, no positions)."""

  def __init__(self, patch_sizes: Sequence[int], in_channel: int = 256):
    super().__init__()
    self.attention = MultiHeadedAttention(patch_sizes, d_model=in_channel)
    self.feed_forward = FeedForward2D(in_channel=in_channel, out_channel=in_channel)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = x + self.attention(x)
    return x + self.feed_forward(x)


class PatchTrans(nn.Module):
  """CTO's patch-transformer stage: one `TransformerBlock` held as `t`."""

  def __init__(self, in_channel: int = 256, patch_sizes: Sequence[int] = DEFAULT_PATCH_SIZES):
    super().__init__()
    self.t = TransformerBlock(patch_sizes, in_channel=in_channel)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.t(x)


class GlobalFilter(nn.Module):
  """GFNet global filter: `irfft2(rfft2(x) * W)` over H, W (ortho), weight (h, w, dim, 2).

  Only valid for inputs of size h x (2 * (w - 1)) (256 x 256 for CTO's instance). CTO computes
  it on the input image and discards the result, so `CTO.forward` does not call it.
  """

  def __init__(self, dim: int = 32, h: int = 64, w: int = 33):
    super().__init__()
    self.complex_weight = nn.Parameter(torch.randn(h, w, dim, 2, dtype=torch.float32) * 0.02)
    self.h = h
    self.w = w

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    dtype = x.dtype
    height, width = x.shape[2:]
    x = x.permute(0, 2, 3, 1).to(torch.float32)
    x = torch.fft.rfft2(x, dim=(1, 2), norm='ortho')
    x = x * torch.view_as_complex(self.complex_weight)
    x = torch.fft.irfft2(x, s=(height, width), dim=(1, 2), norm='ortho')
    return x.to(dtype).permute(0, 3, 1, 2)


class ERB(nn.Module):
  """Edge refinement block: `relu(conv1(x) + conv3(relu(bn(conv2(conv1(x))))))`. Unused by CTO."""

  def __init__(self, in_channels: int, out_channels: int):
    super().__init__()
    self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0)
    self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
    self.relu = nn.ReLU()
    self.bn = nn.BatchNorm2d(out_channels)
    self.conv3 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.conv1(x)
    return self.relu(x + self.conv3(self.relu(self.bn(self.conv2(x)))))


def get_sobel(in_chan: int, out_chan: int) -> Tuple[nn.Sequential, nn.Sequential]:
  """CTO's Sobel pair: Sequential(frozen in->out 3x3 Sobel conv, BatchNorm(out)) for x and y."""

  def sobel(kernel) -> nn.Sequential:
    conv = nn.Conv2d(in_chan, out_chan, kernel_size=3, stride=1, padding=1, bias=False)
    weight = torch.tensor(kernel, dtype=torch.float32).expand(out_chan, in_chan, 3, 3).clone()
    conv.weight = nn.Parameter(weight, requires_grad=False)
    return nn.Sequential(conv, nn.BatchNorm2d(out_chan))

  return sobel(SOBEL_X), sobel(SOBEL_Y)


def run_sobel(conv_x: nn.Module, conv_y: nn.Module, x: torch.Tensor) -> torch.Tensor:
  """`sigmoid(sqrt(gx^2 + gy^2)) * x` (no epsilon, as upstream)."""
  g = torch.sqrt(torch.pow(conv_x(x), 2) + torch.pow(conv_y(x), 2))
  return torch.sigmoid(g) * x


def resize_bilinear(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
  """`F.interpolate(..., mode='bilinear', align_corners=False)` to `size`."""
  return F.interpolate(x, size=tuple(size), mode='bilinear', align_corners=False)


class CTO(nn.Module):
  """Vanilla CTO: (B, 3, H, W) -> (o3, o2, o1, oe).

  o3/o2/o1 are `seg_classes`-channel logits from the 1/16, 1/8, 1/4 decoder levels, upsampled
  x16/x8/x4 to the input size; `oe` is the x4-upsampled sigmoid edge probability.
  `patch_sizes` must divide the x1 feature map (input / 4); upstream's (32, 16, 8, 4) needs an
  input of 128 x 128 or a multiple of 128.
  """

  def __init__(self, seg_classes: int, patch_sizes: Sequence[int] = DEFAULT_PATCH_SIZES):
    super().__init__()
    self.resnet = res2net50_v1b_26w_4s()
    self.fft = GlobalFilter(dim=3, h=256, w=129)
    self.multi_trans = PatchTrans(in_channel=256, patch_sizes=patch_sizes)
    self.num_class = seg_classes
    self.eam = EAM()
    self.sobel_x1, self.sobel_y1 = get_sobel(256, 1)
    self.sobel_x2, self.sobel_y2 = get_sobel(512, 1)
    self.sobel_x3, self.sobel_y3 = get_sobel(1024, 1)
    self.sobel_x4, self.sobel_y4 = get_sobel(2048, 1)
    self.erb_db_1 = ERB(256, self.num_class)
    self.erb_db_2 = ERB(512, self.num_class)
    self.erb_db_3 = ERB(1024, self.num_class)
    self.erb_db_4 = ERB(2048, self.num_class)
    self.head = DAHead(2048 + 256, 2048)
    self.reduce1 = Conv1x1(256, 64)
    self.reduce2 = Conv1x1(512, 64)
    self.reduce3 = Conv1x1(1024, 64)
    self.reduce4 = Conv1x1(2048, 64)
    self.reduce5 = Conv1x1(2048, 1)
    self.dm1 = DM()
    self.dm2 = DM()
    self.dm3 = DM()
    self.dm4 = DM()
    self.predictor1 = nn.Conv2d(64, self.num_class, 1)
    self.predictor2 = nn.Conv2d(64, self.num_class, 1)
    self.predictor3 = nn.Conv2d(64, self.num_class, 1)
    self.predictor4 = nn.Conv2d(64, self.num_class, 1)

  def encode(self, x: torch.Tensor) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """Backbone features [x1, x2, x3, x4] and the dual-attention output (B, 2048, x4 size)."""
    features = list(self.resnet(x))
    x1, x4 = features[0], features[3]
    trans = resize_bilinear(self.multi_trans(x1), x4.shape[2:])
    return features, self.head(torch.cat([trans, x4], dim=1))

  def decode(self, x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor,
             dual_attention: torch.Tensor, edge_att: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """Reduce, DM decoder (dm3 -> dm2 -> dm1), predictors and output upsampling."""
    x1r = self.reduce1(x1)
    x2r = self.reduce2(x2)
    x3r = self.reduce3(x3)
    c3 = self.dm3(x3r, self.reduce4(dual_attention))
    c2 = self.dm2(x2r, c3)
    c1 = self.dm1(x1r, c2)

    def upsample(t: torch.Tensor, factor: int) -> torch.Tensor:
      return F.interpolate(t, scale_factor=factor, mode='bilinear', align_corners=False)

    return (upsample(self.predictor3(c3), 16), upsample(self.predictor2(c2), 8),
            upsample(self.predictor1(c1), 4), upsample(edge_att, 4))

  def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    (x1, x2, x3, x4), dual_attention = self.encode(x)
    s1 = run_sobel(self.sobel_x1, self.sobel_y1, x1)
    s4 = run_sobel(self.sobel_x4, self.sobel_y4, x4)
    edge_att = torch.sigmoid(self.eam(s4, s1))
    x1a = x1 * edge_att
    x2a = x2 * resize_bilinear(edge_att, x2.shape[2:])
    x3a = x3 * resize_bilinear(edge_att, x3.shape[2:])
    return self.decode(x1a, x2a, x3a, dual_attention, edge_att)
