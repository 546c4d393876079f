"""Functional knockouts: components of a trained network switched off inside the forward pass.

A knockout changes what the modules compute, never the parameter tree: `config.model.knockouts`
(a tuple of the names below) reaches `SGDNet` and `SGDC` through `models.build`, so a knocked-out
network applies the trained variables as they are, jits and shards like the intact one, and
knockouts compose (`('guidance=zero', 'sgdc.local=off')`). docs/ablations.md defines each one.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sgdnet_jax.core import errors

GUIDANCE_ZERO = "guidance=zero"
GUIDANCE_SHUFFLE = "guidance=shuffle"
SGDC_DYNAMIC_OFF = "sgdc.dynamic=off"
SGDC_LOCAL_OFF = "sgdc.local=off"
SGDC_IDENTITY = "sgdc=identity"
EDGE_OFF = "edge=off"
KNOCKOUTS = {
  GUIDANCE_ZERO: "the SGE guidance map g is replaced by zeros wherever it is read",
  GUIDANCE_SHUFFLE: "each image gets the guidance map of another image of its batch "
  "(a seeded cyclic permutation: no image keeps its own)",
  SGDC_DYNAMIC_OFF: "every SGDC drops its dynamic-branch term DynConv(LN(x), K) * gate2",
  SGDC_LOCAL_OFF: "every SGDC drops its local-branch term DWConv3x3(x * gate1)",
  SGDC_IDENTITY: "every SGDC block returns its input (the skips reach the decoder unchanged)",
  EDGE_OFF: "CTO's edge gate x * sigmoid(edge) passes x unchanged (gate = 1)",
}
# The fixed seed of the guidance=shuffle permutation.
SHUFFLE_SEED = 0


def _reads_guidance(model: ml_collections.ConfigDict) -> bool:
  if model.skip_fusion in ("guidance_add", "contmix"):
    return True
  return model.skip_fusion == "sgdc" and model.sgdc.guidance == "sge"


def why_not_applicable(model: ml_collections.ConfigDict, knockout: str) -> str | None:
  """Why `knockout` cannot act on the network `model` describes (None: it can)."""
  fusion = f"model.skip_fusion={model.skip_fusion!r}"
  if knockout in (GUIDANCE_ZERO, GUIDANCE_SHUFFLE) and not _reads_guidance(model):
    if model.skip_fusion == "sgdc":
      return f"model.sgdc.guidance={model.sgdc.guidance!r}: the SGDCs read no SGE guidance"
    return f"{fusion}: no module reads an SGE guidance map"
  if knockout in (SGDC_DYNAMIC_OFF, SGDC_LOCAL_OFF, SGDC_IDENTITY) and model.skip_fusion != "sgdc":
    return f"{fusion}: the network has no SGDC"
  if knockout == SGDC_DYNAMIC_OFF and not model.sgdc.dynamic_branch:
    return "model.sgdc.dynamic_branch=False: the SGDCs have no dynamic branch"
  if knockout == SGDC_LOCAL_OFF and not model.sgdc.local_branch:
    return "model.sgdc.local_branch=False: the SGDCs have no local branch"
  if knockout == EDGE_OFF and model.skip_fusion != "edge_gate":
    if model.edge_branch == "sge":
      return (
        "the SGE's edge map feeds no segmentation output (only the edge loss); knock out its "
        "guidance with guidance=zero or guidance=shuffle"
      )
    return f"{fusion}: no edge gate acts on the skips"
  return None


def check(model: ml_collections.ConfigDict) -> tuple[str, ...]:
  """`model.knockouts` as a tuple, each known and acting on this network (else ConfigError)."""
  knockouts = tuple(model.knockouts)
  for knockout in knockouts:
    if knockout not in KNOCKOUTS:
      raise errors.ConfigError(
        f"config.model.knockouts: unknown knockout {knockout!r}; known: {', '.join(KNOCKOUTS)}"
      )
    reason = why_not_applicable(model, knockout)
    if reason:
      raise errors.ConfigError(
        f"config.model.knockouts: {knockout} does not apply to variant {model.variant!r} ({reason})"
      )
  return knockouts


def applicable(model: ml_collections.ConfigDict) -> list[str]:
  """The knockouts that act on the network `model` describes, in the order of KNOCKOUTS."""
  return [knockout for knockout in KNOCKOUTS if why_not_applicable(model, knockout) is None]


def shuffle_sources(batch: int, seed: int = SHUFFLE_SEED) -> np.ndarray:
  """Row i of a shuffled batch comes from row sources[i]: one seeded cycle through the batch.

  With `order` a seeded permutation, image order[j] receives the map of order[j + 1] (the last
  that of order[0]); for a batch of two or more no image keeps its own.
  """
  order = np.random.default_rng(seed).permutation(batch)
  sources = np.empty(batch, np.int64)
  sources[order] = np.roll(order, -1)
  return sources


def knockout_guidance(guidance: jax.Array, knockouts: Sequence[str]) -> jax.Array:
  """The guidance map (B, H, W, C) as the guidance knockouts in `knockouts` leave it."""
  if GUIDANCE_ZERO in knockouts:
    return jnp.zeros_like(guidance)
  if GUIDANCE_SHUFFLE in knockouts:
    return guidance[shuffle_sources(guidance.shape[0])]
  return guidance
