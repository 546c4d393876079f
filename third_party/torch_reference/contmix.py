"""OverLoCK's `DynamicConvBlock` (`models/overlock.py`) in plain PyTorch, for the ContMix ablation.

Configuration of SPEC §3.2(3): is_first=True (no x_scale/h_scale), res_scale=False,
ls_init_value=None, drop_path=0, deploy=False (unmerged DilatedReparamBlock), no iGEMM kernel.
`DynamicConvBlock(256, 64).state_dict()` has exactly the keys, shapes and order of
`reference/keys_contmix_dynconvblock_dim256_ctx16.tsv`.

No natten, timm or einops: the neighbourhood attention uses upstream's CPU fallback (unpadded
unfold, then replicate padding of the patch tensor, i.e. NATTEN's border-shifted windows), and the
relative position bias uses upstream's `apply_rpb` indexing (repeat_interleave + flip).
"""
from typing import Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

# (kernel size, dilation) branches of UniRepLKNet's DilatedReparamBlock, by large-kernel size.
DILATED_BRANCHES = {
    5: ((3, 1), (3, 2)),
    7: ((5, 1), (3, 1), (3, 2), (3, 3)),
    9: ((5, 1), (7, 1), (5, 2), (3, 3), (3, 4)),
    11: ((5, 1), (7, 1), (5, 2), (3, 3), (3, 4), (3, 5)),
    13: ((5, 1), (7, 1), (7, 2), (3, 3), (3, 4), (3, 5)),
    15: ((5, 1), (7, 1), (7, 2), (3, 3), (3, 5), (3, 7)),
    17: ((5, 1), (7, 1), (9, 2), (3, 4), (3, 5), (3, 7)),
    19: ((5, 1), (7, 1), (9, 1), (9, 2), (3, 4), (3, 5), (3, 7)),
}


class LayerNorm2d(nn.LayerNorm):
  """LayerNorm over channels of an NCHW tensor, eps 1e-6."""

  def __init__(self, dim: int):
    super().__init__(dim, eps=1e-6)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()


class GRN(nn.Module):
  """Global Response Normalisation (ConvNeXt V2), parameters (1, C, 1, 1) initialised to 0."""

  def __init__(self, dim: int):
    super().__init__()
    self.gamma = nn.Parameter(torch.zeros(1, dim, 1, 1))
    self.beta = nn.Parameter(torch.zeros(1, dim, 1, 1))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    norm = torch.linalg.vector_norm(x, ord=2, dim=(-2, -1), keepdim=True)
    normalised = norm / (norm.mean(dim=1, keepdim=True) + 1e-6)
    return (self.gamma * normalised + 1) * x + self.beta


class ResDWConv(nn.Conv2d):
  """x + depthwise conv(x) (with bias)."""

  def __init__(self, dim: int, kernel_size: int = 3):
    super().__init__(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return x + super().forward(x)


class SEModule(nn.Module):
  """x * sigmoid(Conv(GELU(Conv(mean(x))))), hidden width max(16, C // 8)."""

  def __init__(self, dim: int, reduction: int = 8):
    super().__init__()
    hidden = max(16, dim // reduction)
    self.proj = nn.Sequential(
        nn.AdaptiveAvgPool2d(1),
        nn.Conv2d(dim, hidden, 1),
        nn.GELU(),
        nn.Conv2d(hidden, dim, 1),
        nn.Sigmoid(),
    )

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return x * self.proj(x)


class DilatedReparamBlock(nn.Module):
  """BN(DW KxK) + sum over branches of BN(dilated DW kxk), all convs without bias."""

  def __init__(self, channels: int, kernel_size: int):
    super().__init__()
    if kernel_size not in DILATED_BRANCHES:
      raise ValueError(f'DilatedReparamBlock kernel_size={kernel_size}: expected one of '
                       f'{sorted(DILATED_BRANCHES)}')
    self.branches = DILATED_BRANCHES[kernel_size]
    self.lk_origin = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2,
                               groups=channels, bias=False)
    self.origin_bn = nn.BatchNorm2d(channels)
    for k, r in self.branches:
      setattr(self, f'dil_conv_k{k}_{r}',
              nn.Conv2d(channels, channels, k, padding=(r * (k - 1) + 1) // 2, dilation=r,
                        groups=channels, bias=False))
      setattr(self, f'dil_bn_k{k}_{r}', nn.BatchNorm2d(channels))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    out = self.origin_bn(self.lk_origin(x))
    for k, r in self.branches:
      out = out + getattr(self, f'dil_bn_k{k}_{r}')(getattr(self, f'dil_conv_k{k}_{r}')(x))
    return out


def upstream_rpb(rpb: torch.Tensor, height: int, width: int, kernel_size: int) -> torch.Tensor:
  """Upstream `apply_rpb`'s bias: (G, 2K-1, 2K-1) -> (1, G, H, W, K*K)."""
  span = 2 * kernel_size - 1
  taps = torch.arange(kernel_size)
  tap_index = (taps[:, None] * span + taps[None, :]).reshape(-1)
  repeats_h = torch.ones(kernel_size, dtype=torch.long)
  repeats_w = torch.ones(kernel_size, dtype=torch.long)
  repeats_h[kernel_size // 2] = height - (kernel_size - 1)
  repeats_w[kernel_size // 2] = width - (kernel_size - 1)
  corner = (taps.repeat_interleave(repeats_h)[:, None] * span
            + taps.repeat_interleave(repeats_w)[None, :])
  index = (corner[..., None] + tap_index).reshape(-1, kernel_size * kernel_size)
  index = torch.flip(index, [0])
  heads = rpb.shape[0]
  return rpb.flatten(1, 2)[:, index].reshape(1, heads, height, width, kernel_size**2)


def neighborhood_aggregate_fallback(attn: torch.Tensor, value: torch.Tensor,
                                    kernel_size: int) -> torch.Tensor:
  """Upstream's CPU fallback for `na2d_av`: attn (B,G,H,W,K*K), value (B,G,H,W,c) -> (B,G,H,W,c).

  Unpadded unfold gives the windows of interior pixels; replicate padding of that patch tensor
  hands border pixels the nearest interior window (NATTEN's shifted window).
  """
  batch, heads, height, width, width_c = value.shape
  pad = kernel_size // 2
  channels_first = value.permute(0, 1, 4, 2, 3).reshape(batch, heads * width_c, height, width)
  patches = F.unfold(channels_first, kernel_size).reshape(
      batch, heads * width_c * kernel_size**2, height - 2 * pad, width - 2 * pad)
  patches = F.pad(patches, (pad, pad, pad, pad), mode='replicate')
  patches = patches.reshape(batch, heads, width_c, kernel_size**2, height, width)
  return torch.einsum('bghwk,bgckhw->bghwc', attn, patches)


class DynamicConvBlock(nn.Module):
  """Context-guided ContMix block. forward(x (B,C,H,W), h_x (B,ctx_dim//4,H,W)) -> (x, ctx)."""

  def __init__(self, dim: int, ctx_dim: int = 64, kernel_size: int = 7, smk_size: int = 5,
               num_heads: int = 2, mlp_ratio: float = 4.0):
    super().__init__()
    ctx_channels = ctx_dim // 4
    out_dim = dim + ctx_channels
    mlp_dim = int(dim * mlp_ratio)
    self.kernel_size = kernel_size
    self.smk_size = smk_size
    self.num_heads = 2 * num_heads
    self.scale = (dim // self.num_heads)**-0.5

    self.dwconv1 = ResDWConv(out_dim, 3)
    self.norm1 = LayerNorm2d(out_dim)
    self.fusion = nn.Sequential(
        nn.Conv2d(out_dim, out_dim, 3, padding=1, groups=out_dim),
        nn.BatchNorm2d(out_dim),
        nn.GELU(),
        nn.Conv2d(out_dim, dim, 1),
        GRN(dim),
    )
    self.weight_query = nn.Sequential(nn.Conv2d(dim, dim // 2, 1, bias=False),
                                      nn.BatchNorm2d(dim // 2))
    self.weight_key = nn.Sequential(nn.AdaptiveAvgPool2d(7),
                                    nn.Conv2d(ctx_channels, dim // 2, 1, bias=False),
                                    nn.BatchNorm2d(dim // 2))
    self.weight_proj = nn.Conv2d(49, kernel_size**2 + smk_size**2, 1)
    self.dyconv_proj = nn.Sequential(nn.Conv2d(dim, dim, 1, bias=False), nn.BatchNorm2d(dim))
    self.lepe = nn.Sequential(DilatedReparamBlock(dim, kernel_size), nn.BatchNorm2d(dim))
    self.se_layer = SEModule(dim)
    self.gate = nn.Sequential(nn.Conv2d(dim, dim, 1, bias=False), nn.BatchNorm2d(dim), nn.SiLU())
    self.proj = nn.Sequential(nn.BatchNorm2d(dim), nn.Conv2d(dim, out_dim, 1))
    self.dwconv2 = ResDWConv(out_dim, 3)
    self.norm2 = LayerNorm2d(out_dim)
    self.mlp = nn.Sequential(
        nn.Conv2d(out_dim, mlp_dim, 1),
        nn.GELU(),
        ResDWConv(mlp_dim, 3),
        GRN(mlp_dim),
        nn.Conv2d(mlp_dim, out_dim, 1),
    )
    self.rpb1 = nn.Parameter(torch.zeros(self.num_heads, 2 * smk_size - 1, 2 * smk_size - 1))
    self.rpb2 = nn.Parameter(torch.zeros(self.num_heads, 2 * kernel_size - 1,
                                         2 * kernel_size - 1))

  def _working_size(self, height: int, width: int) -> Tuple[int, int]:
    if height < width:
      return self.kernel_size, int(self.kernel_size / height * width)
    return int(self.kernel_size / width * height), self.kernel_size

  def forward(self, x: torch.Tensor, h_x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    input_size: Sequence[int] = x.shape[2:]
    batch, channels, height, width = x.shape
    ctx_channels = h_x.shape[1]
    heads = self.num_heads

    x_f = self.dwconv1(torch.cat([x, h_x], dim=1))
    identity = x_f
    x_f = self.norm1(x_f)
    x = self.fusion(x_f)
    gate = self.gate(x)
    lepe = self.lepe(x)

    upsized = min(height, width) < self.kernel_size
    if upsized:
      height, width = self._working_size(height, width)
      x = F.interpolate(x, size=(height, width), mode='bilinear', align_corners=False)
      x_f = F.interpolate(x_f, size=(height, width), mode='bilinear', align_corners=False)

    query, key = torch.split(x_f, [channels, ctx_channels], dim=1)
    query = self.weight_query(query) * self.scale
    key = self.weight_key(key)
    query = query.reshape(batch, heads, -1, height * width)
    key = key.reshape(batch, heads, -1, 49)
    weight = torch.einsum('bgcn,bgcl->bgnl', query, key)
    weight = self.weight_proj(weight.permute(0, 3, 1, 2).contiguous())  # (B, taps, G, HW)
    weight = weight.reshape(batch, -1, heads, height, width).permute(0, 2, 3, 4, 1)
    attn1, attn2 = torch.split(weight, [self.smk_size**2, self.kernel_size**2], dim=-1)
    attn1 = torch.softmax(attn1 + upstream_rpb(self.rpb1, height, width, self.smk_size), dim=-1)
    attn2 = torch.softmax(attn2 + upstream_rpb(self.rpb2, height, width, self.kernel_size),
                          dim=-1)
    value = x.reshape(batch, 2, heads, -1, height, width).permute(1, 0, 2, 4, 5, 3)
    x1 = neighborhood_aggregate_fallback(attn1, value[0], self.smk_size)
    x2 = neighborhood_aggregate_fallback(attn2, value[1], self.kernel_size)
    x = torch.cat([x1, x2], dim=1).permute(0, 1, 4, 2, 3).reshape(batch, channels, height, width)
    if upsized:
      x = F.adaptive_avg_pool2d(x, input_size)

    x = self.dyconv_proj(x)
    x = self.se_layer(x + lepe)
    x = self.proj(gate * x)
    x = self.dwconv2(identity + x)
    x = x + self.mlp(self.norm2(x))
    return x[:, :channels], x[:, channels:]
