"""Structure-Guided Dynamic Convolution (SGDC) as in the official SGDC repository's `sgdc.py`.

Keys equal `reference/keys_sgdc.tsv` (`ls1`, `ls2` first). The forward pass is the official one
with its einops pattern `'b (h k) hgt wdt -> b h k (hgt*wdt)'` (which raises in einops) read as
intended, `(hgt wdt)`: the kernel logits are flattened over H*W. Written with plain torch ops.
"""
import torch
from torch import nn
from torch.nn import functional as F


class LayerNorm2d(nn.LayerNorm):
  """LayerNorm over the channel axis of an NCHW tensor, eps 1e-6."""

  def __init__(self, dim: int):
    super().__init__(dim, eps=1e-6)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class DropPath(nn.Module):
  """Stochastic depth per sample (timm semantics: kept samples are scaled by 1 / keep)."""

  def __init__(self, drop_prob: float):
    super().__init__()
    if not 0.0 <= drop_prob < 1.0:
      raise ValueError(f'DropPath drop_prob must be in [0, 1), got {drop_prob}')
    self.drop_prob = drop_prob

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    if not self.training or self.drop_prob == 0.0:
      return x
    keep = 1.0 - self.drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class SGDC(nn.Module):
  """SGDC block: guidance-conditioned gates and per-pixel dynamic kernels, then an MLP.

  forward(x, g): g is resized bilinearly to x's size and projected to `dim` channels;
  `attn(x + g)` gives gate logits a1, a2 (dim each) and kernel logits (num_heads * k * k).
  Local branch `dwconv(x * sigmoid(a1))` on the raw x; dynamic branch: k x k windows of
  `norm1(x)` (zero padding), weighted per head and pixel by the softmax over the k*k taps, times
  `sigmoid(a2)`. `x += ls1 * (local + dynamic)`, then `x += ls2 * mlp(norm2(x))`.
  """

  def __init__(self, dim: int, guide_ch: int = 16, num_heads: int = 4, kernel_size: int = 7,
               mlp_ratio: float = 4., drop_path: float = 0., ls_init: float = 1e-6):
    super().__init__()
    if dim % num_heads:
      raise ValueError(f'SGDC dim {dim} is not divisible by num_heads {num_heads}')
    if kernel_size % 2 == 0:
      raise ValueError(f'SGDC kernel_size must be odd, got {kernel_size}')
    self.dim = dim
    self.h = num_heads
    self.k = kernel_size
    self.k_area = kernel_size * kernel_size

    self.proj_guidance = nn.Conv2d(guide_ch, dim, 1)
    self.attn = nn.Conv2d(dim, dim * 2 + self.h * self.k_area, 1)
    self.norm1 = LayerNorm2d(dim)
    self.norm2 = LayerNorm2d(dim)
    self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
    hidden = int(dim * mlp_ratio)
    self.mlp = nn.Sequential(
        nn.Conv2d(dim, hidden, 1),
        nn.GELU(),
        nn.Conv2d(hidden, dim, 1),
    )
    self.drop_path = DropPath(drop_path) if drop_path else nn.Identity()
    self.ls1 = nn.Parameter(ls_init * torch.ones(dim))
    self.ls2 = nn.Parameter(ls_init * torch.ones(dim))

  def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    b, c, height, width = x.shape
    identity = x
    g = F.interpolate(g, size=x.shape[2:], mode='bilinear', align_corners=False)
    w = self.attn(x + self.proj_guidance(g))
    attn1, attn2, kernel = torch.split(w, [self.dim, self.dim, self.h * self.k_area], dim=1)

    local = self.dwconv(x * torch.sigmoid(attn1))

    # Unfold gives (B, C * k*k, H*W) with channel index c * k*k + tap; heads are contiguous
    # channel groups, kernel logits are head-major (index head * k*k + tap).
    patches = F.unfold(self.norm1(x), kernel_size=self.k, padding=self.k // 2)
    patches = patches.view(b, self.h, c // self.h, self.k_area, height * width)
    kernel = kernel.reshape(b, self.h, self.k_area, height * width).softmax(dim=2)
    dynamic = torch.einsum('bhckl,bhkl->bhcl', patches, kernel).reshape(b, c, height, width)
    dynamic = dynamic * torch.sigmoid(attn2)

    x = identity + self.drop_path(self.ls1.view(1, -1, 1, 1) * (local + dynamic))
    return x + self.drop_path(self.ls2.view(1, -1, 1, 1) * self.mlp(self.norm2(x)))
