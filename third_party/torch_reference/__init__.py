"""PyTorch reference modules reproducing the upstream CTO / SGE / SGDC state dicts and forwards.

Used only by tests and benchmarks (parity and weight porting); see README.md for provenance.
"""
from third_party.torch_reference.cto import CTO, DEFAULT_PATCH_SIZES
from third_party.torch_reference.res2net import Res2Net
from third_party.torch_reference.res2net import res2net101_v1b_26w_4s
from third_party.torch_reference.res2net import res2net50_v1b_26w_4s
from third_party.torch_reference.sgdc import SGDC
from third_party.torch_reference.sgdnet import SGDNet
from third_party.torch_reference.sge import SGE

__all__ = [
    'CTO', 'DEFAULT_PATCH_SIZES', 'Res2Net', 'SGDC', 'SGDNet', 'SGE', 'res2net101_v1b_26w_4s',
    'res2net50_v1b_26w_4s',
]
