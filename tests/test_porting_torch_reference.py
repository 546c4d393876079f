"""Tests of the PyTorch reference modules in third_party/torch_reference.

State dicts must equal the upstream key tables in shared/reference exactly (key, order, shape,
dtype, parameter/buffer, requires_grad); parameter counts must equal SPEC §0.2 / §1.6; and the
forward passes must follow SPEC §1-§2, checked against independent re-derivations.
"""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from tests import reference_tables, tolerances
from third_party.torch_reference import cto as cto_lib
from third_party.torch_reference import res2net as res2net_lib
from third_party.torch_reference import sgdc as sgdc_lib
from third_party.torch_reference import sgdnet as sgdnet_lib
from third_party.torch_reference import sge as sge_lib

SMALL_PATCH_SIZES = (8, 4, 2, 1)  # x1 of a 64x64 input is 16x16.


def state_dict_table(module: nn.Module):
  """Rows (key, shape, dtype, kind, requires_grad, numel) formatted like the reference tsvs."""
  rows = []
  for key, value in module.state_dict(keep_vars=True).items():
    kind = "parameter" if isinstance(value, nn.Parameter) else "buffer"
    rows.append(
      (
        key,
        str(tuple(value.shape)),
        str(value.dtype).removeprefix("torch."),
        kind,
        str(value.requires_grad),
        str(value.numel()),
      )
    )
  return rows


def reference_table(name: str):
  return reference_tables.read_table(name)


def trainable(module: nn.Module) -> int:
  return sum(p.numel() for p in module.parameters() if p.requires_grad)


def frozen(module: nn.Module) -> int:
  return sum(p.numel() for p in module.parameters() if not p.requires_grad)


def randomize_batch_norm(module: nn.Module, generator: torch.Generator) -> None:
  """Non-trivial BN statistics and affine parameters, so eval-mode BN is not the identity."""
  for m in module.modules():
    if isinstance(m, nn.BatchNorm2d):
      n = m.num_features
      m.running_mean.copy_(torch.randn(n, generator=generator, dtype=m.running_mean.dtype))
      m.running_var.copy_(torch.rand(n, generator=generator, dtype=m.running_var.dtype) + 0.5)
      with torch.no_grad():
        m.weight.copy_(torch.randn(n, generator=generator, dtype=m.weight.dtype))
        m.bias.copy_(torch.randn(n, generator=generator, dtype=m.bias.dtype))


@pytest.fixture(scope="module")
def cto_model():
  torch.manual_seed(0)
  return cto_lib.CTO(2, patch_sizes=SMALL_PATCH_SIZES).eval()


@pytest.fixture(scope="module")
def sgdnet_model():
  torch.manual_seed(0)
  return sgdnet_lib.SGDNet(2, patch_sizes=SMALL_PATCH_SIZES).eval()


# --- State-dict layouts and parameter counts ------------------------------------------------


@pytest.mark.parametrize(
  "table, build",
  [
    ("keys_res2net50_v1b.tsv", res2net_lib.res2net50_v1b_26w_4s),
    ("keys_sge.tsv", sge_lib.SGE),
    ("keys_sgdc.tsv", lambda: sgdc_lib.SGDC(256, 16)),
  ],
)
def test_module_state_dict_equals_reference_table(table, build):
  assert state_dict_table(build()) == reference_table(table)


def test_cto_state_dict_equals_reference_table(cto_model):
  assert state_dict_table(cto_model) == reference_table("keys_cto.tsv")


def test_sgdnet_state_dict_equals_reference_table(sgdnet_model):
  assert state_dict_table(sgdnet_model) == reference_table("keys_sgdnet_candidate_x1x2x3.tsv")


@pytest.mark.parametrize(
  "build, expected_trainable, expected_frozen",
  [
    (sge_lib.SGE, 1_916_160, 1_179_648),
    (lambda: sgdc_lib.SGDC(256), 715_972, 0),
    (lambda: sgdc_lib.SGDC(512), 2_742_468, 0),
    (lambda: sgdc_lib.SGDC(1024), 10_727_620, 0),
    (res2net_lib.res2net50_v1b_26w_4s, 25_718_352, 0),
    # Res2Net-50 plus 17 more layer3 'normal' blocks of 1,147,504 parameters each.
    (res2net_lib.res2net101_v1b_26w_4s, 45_225_920, 0),
  ],
)
def test_module_parameter_counts(build, expected_trainable, expected_frozen):
  module = build()
  assert (trainable(module), frozen(module)) == (expected_trainable, expected_frozen)


def test_network_parameter_counts(cto_model, sgdnet_model):
  assert (trainable(cto_model), frozen(cto_model)) == (62_216_794, 69_120)
  assert (trainable(sgdnet_model), frozen(sgdnet_model)) == (76_448_989, 1_207_296)
  assert trainable(cto_model.resnet) - trainable(cto_model.resnet.fc) == 23_669_352
  assert trainable(cto_model.multi_trans) == 1_969_152
  assert trainable(cto_model.head) == 31_461_586
  assert trainable(cto_model.eam) == 1_870_017
  assert trainable(cto_model.dm1) == 185_605


def test_initialisation_follows_upstream(cto_model):
  resnet = res2net_lib.res2net50_v1b_26w_4s()
  weight = resnet.layer3[0].conv1.weight  # (416, 1024, 1, 1): kaiming_normal, fan_out = 416.
  assert weight.std().item() == pytest.approx(math.sqrt(2.0 / 416), rel=0.02)
  assert torch.all(resnet.layer2[1].bns[0].weight == 1)
  assert torch.all(resnet.layer2[1].bns[0].bias == 0)
  assert resnet.fc.weight.abs().max().item() <= 1 / math.sqrt(2048)
  assert cto_model.head.pam.alpha.item() == 0.0
  assert cto_model.head.cam.beta.item() == 0.0
  sgdc = sgdc_lib.SGDC(64)
  assert torch.all(sgdc.ls1 == 1e-6) and torch.all(sgdc.ls2 == 1e-6)
  assert isinstance(sgdc.drop_path, nn.Identity)


# --- Full networks --------------------------------------------------------------------------


def capture(module: nn.Module, store: dict, name: str):
  def hook(_, inputs, output):
    store[name] = (inputs, output)

  return module.register_forward_hook(hook)


def test_cto_forward_gates_skips_by_edge(cto_model):
  seen = {}
  handles = [capture(cto_model.resnet, seen, "resnet"), capture(cto_model.eam, seen, "eam")]
  handles += [capture(getattr(cto_model, f"reduce{i}"), seen, f"reduce{i}") for i in (1, 2, 3)]
  x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    outputs = cto_model(x)
  for handle in handles:
    handle.remove()

  assert [tuple(o.shape) for o in outputs] == [(1, 2, 64, 64)] * 3 + [(1, 1, 64, 64)]
  assert all(torch.isfinite(o).all() for o in outputs)
  x1, x2, x3, _ = seen["resnet"][1]
  edge_att = torch.sigmoid(seen["eam"][1])
  assert tuple(edge_att.shape) == (1, 1, 16, 16)
  torch.testing.assert_close(seen["reduce1"][0][0], x1 * edge_att)
  torch.testing.assert_close(
    seen["reduce3"][0][0], x3 * F.interpolate(edge_att, size=(4, 4), mode="bilinear")
  )
  torch.testing.assert_close(outputs[3], F.interpolate(edge_att, scale_factor=4, mode="bilinear"))


def test_sgdnet_forward_feeds_sgdc_without_edge_gating(sgdnet_model):
  seen = {}
  handles = [capture(sgdnet_model.resnet, seen, "resnet"), capture(sgdnet_model.eam, seen, "eam")]
  for i in (1, 2, 3):
    handles.append(capture(sgdnet_model.sgdc[f"x{i}"], seen, f"sgdc{i}"))
    handles.append(capture(getattr(sgdnet_model, f"reduce{i}"), seen, f"reduce{i}"))
  x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
  with torch.no_grad():
    outputs = sgdnet_model(x)
  for handle in handles:
    handle.remove()

  assert [tuple(o.shape) for o in outputs] == [(1, 2, 64, 64)] * 3 + [(1, 1, 64, 64)]
  assert all(torch.isfinite(o).all() for o in outputs)
  features = seen["resnet"][1]
  (x4, x1), (edge, guidance) = seen["eam"]
  assert x4 is features[3] and x1 is features[0]
  assert tuple(edge.shape) == (1, 1, 16, 16) and tuple(guidance.shape) == (1, 16, 16, 16)
  for i in (1, 2, 3):
    sgdc_inputs, sgdc_output = seen[f"sgdc{i}"]
    assert sgdc_inputs[0] is features[i - 1] and sgdc_inputs[1] is guidance
    assert seen[f"reduce{i}"][0][0] is sgdc_output
  torch.testing.assert_close(
    outputs[3], F.interpolate(torch.sigmoid(edge), scale_factor=4, mode="bilinear")
  )


# --- SGE --------------------------------------------------------------------------------------


def channel_sum_sobel(x: torch.Tensor, kernel) -> torch.Tensor:
  weight = torch.tensor(kernel, dtype=x.dtype).view(1, 1, 3, 3)
  return F.conv2d(x.sum(dim=1, keepdim=True), weight, padding=1)


def test_sge_dense_sobel_equals_sobel_of_channel_sum():
  sge = sge_lib.SGE().double()
  s = torch.randn(2, 256, 9, 11, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
  with torch.no_grad():
    gx, gy = sge.sobel_x(s), sge.sobel_y(s)
  torch.testing.assert_close(
    gx, channel_sum_sobel(s, sge_lib.SOBEL_X).expand_as(gx), rtol=1e-12, atol=1e-10
  )
  torch.testing.assert_close(
    gy, channel_sum_sobel(s, sge_lib.SOBEL_Y).expand_as(gy), rtol=1e-12, atol=1e-10
  )
  assert not sge.sobel_x.weight.requires_grad and not sge.sobel_y.weight.requires_grad


def test_sge_forward_equals_channel_sum_formulation():
  generator = torch.Generator().manual_seed(4)
  sge = sge_lib.SGE().double().eval()
  randomize_batch_norm(sge, generator)
  x4 = torch.randn(2, 2048, 3, 3, generator=generator, dtype=torch.float64)
  x1 = torch.randn(2, 256, 12, 12, generator=generator, dtype=torch.float64)

  def modulate(s, refiner):
    gx = channel_sum_sobel(s, sge_lib.SOBEL_X)
    gy = channel_sum_sobel(s, sge_lib.SOBEL_Y)
    return refiner(torch.sigmoid(torch.sqrt(gx**2 + gy**2)) * s)

  with torch.no_grad():
    edge, guidance = sge(x4, x1)
    s4 = modulate(sge.s4_proj(x4), sge.refine4)
    s1 = modulate(sge.s1_proj(x1), sge.refine1)
    s4 = F.interpolate(s4, size=(12, 12), mode="bilinear", align_corners=False)
    fused = sge.fuse(torch.cat([s4, s1], dim=1))
  assert tuple(edge.shape) == (2, 1, 12, 12) and tuple(guidance.shape) == (2, 16, 12, 12)
  torch.testing.assert_close(edge, sge.out_edge_map(fused))
  torch.testing.assert_close(guidance, sge.out_guidance(fused))


# --- SGDC -------------------------------------------------------------------------------------


def sgdc_by_shifted_windows(m: sgdc_lib.SGDC, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
  """SPEC §2.2 written with explicit shifted windows instead of unfold."""
  b, c, h, w = x.shape
  k, heads = m.k, m.h
  g = m.proj_guidance(F.interpolate(g, size=(h, w), mode="bilinear", align_corners=False))
  a = m.attn(x + g)
  gate1, gate2, logits = a[:, :c], a[:, c : 2 * c], a[:, 2 * c :]
  local = m.dwconv(x * torch.sigmoid(gate1))
  xn = F.layer_norm(x.permute(0, 2, 3, 1), (c,), m.norm1.weight, m.norm1.bias, 1e-6).permute(
    0, 3, 1, 2
  )
  padded = F.pad(xn, (k // 2,) * 4)
  taps = torch.softmax(logits.view(b, heads, k * k, h, w), dim=2)
  dynamic = torch.zeros_like(x)
  for head in range(heads):
    channels = slice(head * c // heads, (head + 1) * c // heads)
    for ky in range(k):
      for kx in range(k):
        window = padded[:, channels, ky : ky + h, kx : kx + w]
        dynamic[:, channels] += window * taps[:, head, ky * k + kx].unsqueeze(1)
  y = local + dynamic * torch.sigmoid(gate2)
  x = x + m.ls1.view(1, -1, 1, 1) * y
  xn2 = F.layer_norm(x.permute(0, 2, 3, 1), (c,), m.norm2.weight, m.norm2.bias, 1e-6).permute(
    0, 3, 1, 2
  )
  hidden = F.gelu(F.conv2d(xn2, m.mlp[0].weight, m.mlp[0].bias))
  return x + m.ls2.view(1, -1, 1, 1) * F.conv2d(hidden, m.mlp[2].weight, m.mlp[2].bias)


@pytest.mark.parametrize("num_heads, kernel_size", [(4, 7), (2, 5)])
def test_sgdc_equals_shifted_window_derivation(num_heads, kernel_size):
  generator = torch.Generator().manual_seed(5)
  m = sgdc_lib.SGDC(32, guide_ch=16, num_heads=num_heads, kernel_size=kernel_size).double()
  with torch.no_grad():
    for p in m.parameters():
      p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.5)
  x = torch.randn(2, 32, 10, 12, generator=generator, dtype=torch.float64)
  g = torch.randn(2, 16, 20, 24, generator=generator, dtype=torch.float64)
  with torch.no_grad():
    torch.testing.assert_close(m(x, g), sgdc_by_shifted_windows(m, x, g), rtol=1e-10, atol=1e-10)


def test_sgdc_drop_path_drops_whole_samples_in_training():
  drop = sgdc_lib.DropPath(0.5).train()
  torch.manual_seed(6)
  x = torch.rand(64, 3, 4, 4) + 1.0
  y = drop(x)
  per_sample = (y / x).flatten(1)
  dropped = (per_sample == 0).all(dim=1)
  kept = (per_sample == 2.0).all(dim=1)
  assert torch.all(dropped | kept) and dropped.any() and kept.any()
  assert torch.equal(drop.eval()(x), x)


def test_sgdc_rejects_bad_configuration():
  with pytest.raises(ValueError, match="not divisible by num_heads"):
    sgdc_lib.SGDC(30, num_heads=4)
  with pytest.raises(ValueError, match="kernel_size must be odd"):
    sgdc_lib.SGDC(32, kernel_size=6)


# --- Res2Net ----------------------------------------------------------------------------------


def bottle2neck_by_formula(block: res2net_lib.Bottle2neck, x: torch.Tensor) -> torch.Tensor:
  """SPEC §1.2 block semantics from the block's weights."""

  def bn(m, t):
    return F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

  stride = block.convs[0].stride[0]
  out = F.relu(bn(block.bn1, F.conv2d(x, block.conv1.weight)))
  s = torch.split(out, block.width, dim=1)
  ys = []
  for i in range(3):
    inp = s[i] if (i == 0 or block.stype == "stage") else ys[-1] + s[i]
    ys.append(
      F.relu(bn(block.bns[i], F.conv2d(inp, block.convs[i].weight, stride=stride, padding=1)))
    )
  if block.stype == "stage":
    ys.append(F.avg_pool2d(s[3], 3, stride=stride, padding=1, count_include_pad=True))
  else:
    ys.append(s[3])
  out = bn(block.bn3, F.conv2d(torch.cat(ys, dim=1), block.conv3.weight))
  if block.downsample is None:
    residual = x
  else:
    pooled = F.avg_pool2d(x, stride, stride=stride, ceil_mode=True, count_include_pad=False)
    residual = bn(block.downsample[2], F.conv2d(pooled, block.downsample[1].weight))
  return F.relu(out + residual)


@pytest.mark.parametrize(
  "stype, stride, inplanes", [("stage", 2, 32), ("stage", 1, 32), ("normal", 1, 64)]
)
def test_bottle2neck_matches_block_formula(stype, stride, inplanes):
  generator = torch.Generator().manual_seed(7)
  downsample = None
  if stype == "stage":
    downsample = nn.Sequential(
      nn.AvgPool2d(stride, stride=stride, ceil_mode=True, count_include_pad=False),
      nn.Conv2d(inplanes, 64, 1, bias=False),
      nn.BatchNorm2d(64),
    )
  block = res2net_lib.Bottle2neck(inplanes, 16, stride, downsample=downsample, stype=stype)
  block = block.double().eval()
  randomize_batch_norm(block, generator)
  x = torch.randn(2, inplanes, 9, 9, generator=generator, dtype=torch.float64)
  with torch.no_grad():
    torch.testing.assert_close(block(x), bottle2neck_by_formula(block, x))


def test_res2net_stage_shapes(cto_model):
  with torch.no_grad():
    features = cto_model.resnet(torch.randn(1, 3, 64, 64))
  assert [tuple(f.shape) for f in features] == [
    (1, 256, 16, 16),
    (1, 512, 8, 8),
    (1, 1024, 4, 4),
    (1, 2048, 2, 2),
  ]


def test_bottle2neck_rejects_unknown_stype():
  with pytest.raises(ValueError, match="stype must be 'normal' or 'stage'"):
    res2net_lib.Bottle2neck(64, 16, stype="first")


# --- CTO blocks -------------------------------------------------------------------------------


def test_patch_tokens_layout_and_inverse():
  x = torch.arange(2 * 3 * 8 * 12, dtype=torch.float32).view(2, 3, 8, 12)
  p = 4
  tokens = cto_lib.to_patch_tokens(x, p)
  assert tuple(tokens.shape) == (2, 6, 3 * p * p)
  # Token n = row-major patch (pi, pj); within a token the order is (channel, row, col).
  pi, pj, c, r, q = 1, 2, 2, 3, 1
  assert tokens[1, pi * 3 + pj, c * p * p + r * p + q] == x[1, c, pi * p + r, pj * p + q]
  assert torch.equal(cto_lib.from_patch_tokens(tokens, 3, p, 8, 12), x)


def test_patch_attention_equals_token_softmax_attention():
  generator = torch.Generator().manual_seed(8)
  attention = cto_lib.MultiHeadedAttention((4, 2), d_model=8).double().eval()
  x = torch.randn(1, 8, 8, 8, generator=generator, dtype=torch.float64)
  with torch.no_grad():
    q, k, v = (
      m(x) for m in (attention.query_embedding, attention.key_embedding, attention.value_embedding)
    )
    chunks = []
    for i, p in enumerate((4, 2)):
      qt, kt, vt = (cto_lib.to_patch_tokens(t[:, 4 * i : 4 * (i + 1)], p) for t in (q, k, v))
      weights = torch.softmax(qt @ kt.transpose(1, 2) / math.sqrt(4 * p * p), dim=-1)
      chunks.append(cto_lib.from_patch_tokens(weights @ vt, 4, p, 8, 8))
    expected = attention.output_linear(torch.cat(chunks, dim=1))
    torch.testing.assert_close(attention(x), expected)


def test_patch_trans_rejects_indivisible_feature_map():
  trans = cto_lib.PatchTrans(256, patch_sizes=cto_lib.DEFAULT_PATCH_SIZES)
  with pytest.raises(ValueError, match="16x16 is not divisible by patch size 32"):
    trans(torch.zeros(1, 256, 16, 16))


def test_dual_attention_modules_match_formulas():
  generator = torch.Generator().manual_seed(9)
  x = torch.randn(2, 16, 3, 4, generator=generator, dtype=torch.float64)
  pam = cto_lib.PositionAttention(16).double()
  cam = cto_lib.ChannelAttention().double()
  with torch.no_grad():
    pam.alpha.fill_(0.7)
    cam.beta.fill_(-0.3)
    flat = x.flatten(2)
    b_, c_, d_ = (m(x).flatten(2) for m in (pam.conv_b, pam.conv_c, pam.conv_d))
    s = torch.softmax(torch.einsum("bci,bcj->bij", b_, c_), dim=-1)
    expected_pam = 0.7 * torch.einsum("bcj,bij->bci", d_, s).view_as(x) + x
    affinity = flat @ flat.transpose(1, 2)
    affinity = affinity.max(dim=-1, keepdim=True).values - affinity
    expected_cam = -0.3 * (torch.softmax(affinity, dim=-1) @ flat).view_as(x) + x
    torch.testing.assert_close(pam(x), expected_pam)
    torch.testing.assert_close(cam(x), expected_cam)


def test_global_filter_with_unit_weight_is_identity():
  gf = cto_lib.GlobalFilter(dim=3, h=8, w=5)
  with torch.no_grad():
    gf.complex_weight.zero_()
    gf.complex_weight[..., 0] = 1.0
  x = torch.randn(2, 3, 8, 8)
  # float32 FFT and inverse over 8 x 8 points: log2(64) = 6 butterfly stages each way, each
  # rounding within eps of the 2-norm of the transformed map.
  norm = float(torch.linalg.vector_norm(x, dim=(2, 3)).max())
  torch.testing.assert_close(gf(x), x, rtol=0, atol=2 * 6 * tolerances.EPS32 * norm)


def test_erb_output_shape():
  erb = cto_lib.ERB(8, 2).eval()
  with torch.no_grad():
    y = erb(torch.randn(2, 8, 5, 5))
  assert tuple(y.shape) == (2, 2, 5, 5) and torch.all(y >= 0)
