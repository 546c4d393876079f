"""The SGD-Net candidate assembly (SPEC §0.1, §1.0, §1.6): vanilla CTO with EAM -> SGE and the
edge gating -> SGDC on x1, x2, x3.

The authors' full network is not public; this is the reconstruction whose state dict is
`reference/keys_sgdnet_candidate_x1x2x3.tsv` (76,448,989 trainable parameters): the CTO module
tree with `eam` holding an SGE, CTO's `sobel_x1/y1/x4/y4` removed, its unused modules kept, and
`sgdc.x1/x2/x3` appended. There is no `x * sigmoid(edge)` gating.
"""
from typing import Sequence, Tuple

import torch
from torch import nn

from third_party.torch_reference.cto import CTO, DEFAULT_PATCH_SIZES
from third_party.torch_reference.sge import SGE
from third_party.torch_reference.sgdc import SGDC


class SGDNet(CTO):
  """SGD-Net candidate: (B, 3, H, W) -> (o3, o2, o1, oe), same conventions as `CTO`.

  `edge, g = eam(x4, x1)` (SGE on the raw backbone features); x_i' = sgdc.x_i(x_i, g) for
  i = 1, 2, 3 (dims 256 / 512 / 1024) feed reduce1/2/3; `oe` = x4-upsampled sigmoid(edge).
  """

  def __init__(self, seg_classes: int, patch_sizes: Sequence[int] = DEFAULT_PATCH_SIZES,
               num_heads: int = 4, kernel_size: int = 7, guide_ch: int = 16):
    super().__init__(seg_classes, patch_sizes=patch_sizes)
    # Re-assigning `eam` keeps its position in the module order (and so in the state dict).
    self.eam = SGE(s4_in=2048, s1_in=256, mid=256, guide_ch=guide_ch, bottleneck=256)
    del self.sobel_x1, self.sobel_y1, self.sobel_x4, self.sobel_y4
    self.sgdc = nn.ModuleDict({
        name: SGDC(dim, guide_ch=guide_ch, num_heads=num_heads, kernel_size=kernel_size)
        for name, dim in (('x1', 256), ('x2', 512), ('x3', 1024))})

  def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    (x1, x2, x3, x4), dual_attention = self.encode(x)
    edge, guidance = self.eam(x4, x1)
    x1 = self.sgdc['x1'](x1, guidance)
    x2 = self.sgdc['x2'](x2, guidance)
    x3 = self.sgdc['x3'](x3, guidance)
    return self.decode(x1, x2, x3, dual_attention, torch.sigmoid(edge))
