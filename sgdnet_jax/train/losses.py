"""Training losses (SPEC §0.6-0.7, §4.1-4.2).

The paper's loss: for each decoder output o1..o3, BCE + soft Dice (smoothing 1, per sample, then
the batch mean) against the mask M, plus lambda x soft Dice of the edge probability against the
boundary ground truth E = dilate(M, disk(2)) - M. CTO's structure loss (weighted IoU + weighted
cross-entropy) is an option, without its batch-broadcast bug. Everything is float32 (float64
when the model computes in float64, `layers.param_dtype` of its outputs).
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sgdnet_jax import models
from sgdnet_jax.models import layers

SEG_LOSSES = ("bce_dice", "structure")
# disk(2) as skimage builds it: the 13-pixel diamond-like footprint of radius 2.
DISK2 = np.array(
  [[0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 1, 1, 1, 0], [0, 0, 1, 0, 0]], bool
)


def boundary_target(mask: jax.Array, dtype=jnp.float32) -> jax.Array:
  """E = dilate(M, disk(2)) - M: the outer 2-pixel ring of every foreground region (B, H, W)."""
  m = (mask > 0).astype(dtype)[..., None]
  return (_dilate_disk2(m) - m)[..., 0]


def _dilate_disk2(m: jax.Array) -> jax.Array:
  """Binary dilation with the disk(2) footprint, outside the image counting as background."""
  padded = jnp.pad(m, ((0, 0), (2, 2), (2, 2), (0, 0)))
  height, width = m.shape[1:3]
  out = jnp.zeros_like(m)
  for dy, dx in zip(*np.nonzero(DISK2)):
    out = jnp.maximum(out, padded[:, dy : dy + height, dx : dx + width])
  return out


def soft_dice_loss(prob: jax.Array, target: jax.Array, smooth: float) -> jax.Array:
  """1 - (2 sum(p t) + s) / (sum p + sum t + s), per sample (summed over all but axis 0)."""
  axes = tuple(range(1, prob.ndim))
  intersection = jnp.sum(prob * target, axes)
  return 1.0 - (2.0 * intersection + smooth) / (
    jnp.sum(prob, axes) + jnp.sum(target, axes) + smooth
  )


def pixel_cross_entropy(logits: jax.Array, target: jax.Array) -> jax.Array:
  """Per-pixel BCE (1 channel) or CE (2 channels) against a 0/1 target, shape (B, H, W)."""
  if logits.shape[-1] == 1:
    z = logits[..., 0]
    return jnp.maximum(z, 0) - z * target + jnp.log1p(jnp.exp(-jnp.abs(z)))
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  return -(target * log_probs[..., 1] + (1.0 - target) * log_probs[..., 0])


def bce_dice_loss(logits: jax.Array, target: jax.Array, smooth: float) -> jax.Array:
  """Per-sample BCE (mean over pixels) + soft Dice on the foreground probability, (B,)."""
  bce = jnp.mean(pixel_cross_entropy(logits, target), axis=(1, 2))
  return bce + soft_dice_loss(models.foreground_probability(logits), target, smooth)


def structure_loss(logits: jax.Array, target: jax.Array) -> jax.Array:
  """CTO's structure loss per sample: boundary-weighted CE + weighted IoU over both classes.

  w = 1 + 5 |avgpool31(M) - M|. Upstream broadcasts the (B, H, W) CE against a (B, 1, H, W)
  weight, weighting every sample by the batch-mean map; here each sample uses its own map.
  """
  pooled = jax.lax.reduce_window(
    target[..., None],
    0.0,
    jax.lax.add,
    (1, 31, 31, 1),
    (1, 1, 1, 1),
    ((0, 0), (15, 15), (15, 15), (0, 0)),
  )[..., 0] / (31.0 * 31.0)
  weight = 1.0 + 5.0 * jnp.abs(pooled - target)
  wce = jnp.mean(pixel_cross_entropy(logits, target) * weight, axis=(1, 2))
  fg = models.foreground_probability(logits)
  ious = []
  for prob, truth in ((fg, target), (1.0 - fg, 1.0 - target)):
    tp = jnp.sum(prob * truth * weight, axis=(1, 2))
    fp = jnp.sum(prob * (1.0 - truth) * weight, axis=(1, 2))
    fn = jnp.sum((1.0 - prob) * truth * weight, axis=(1, 2))
    ious.append(1.0 - (tp + 1.0) / (tp + fp + fn + 1.0))
  return wce + 0.5 * (ious[0] + ious[1])


def total_loss(
  outputs: dict[str, jax.Array],
  mask: jax.Array,
  loss_config: ml_collections.ConfigDict,
  weights: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The training objective and its parts, averaged over samples (weighted by `weights`)."""
  if loss_config.seg not in SEG_LOSSES:
    raise ValueError(f"config.loss.seg must be one of {SEG_LOSSES}, got {loss_config.seg!r}")
  dtype = layers.param_dtype(outputs["o1"].dtype)
  target = (mask > 0).astype(dtype)
  if weights is None:
    weights = jnp.ones(target.shape[:1], dtype)
  mean = lambda per_sample: jnp.sum(per_sample * weights) / jnp.maximum(jnp.sum(weights), 1.0)
  parts = {}
  for key in ("o1", "o2", "o3"):
    logits = outputs[key].astype(dtype)
    per_sample = (
      bce_dice_loss(logits, target, loss_config.dice_smooth)
      if loss_config.seg == "bce_dice"
      else structure_loss(logits, target)
    )
    parts[f"loss_{key}"] = mean(per_sample)
  loss = parts["loss_o1"] + parts["loss_o2"] + parts["loss_o3"]
  if "edge" in outputs and loss_config.edge_weight > 0:
    edge_dice = soft_dice_loss(
      outputs["edge"][..., 0].astype(dtype), boundary_target(target, dtype), loss_config.dice_smooth
    )
    parts["loss_edge"] = mean(edge_dice)
    loss = loss + loss_config.edge_weight * parts["loss_edge"]
  parts["loss"] = loss
  return loss, parts
