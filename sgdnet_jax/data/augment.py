"""Training augmentations (SPEC §0.9, §4.4; all off by default) and ImageNet normalisation.

The optional geometric set follows MedISeg's "da2" branch: horizontal and vertical flips
(p = 0.5 each), ShiftScaleRotate (shift ±10% of the size, scale ±10%, rotation ±45°, p = 0.5,
bilinear image / nearest mask, reflect-101 border as albumentations), plus right-angle rotations
and a colour jitter (brightness, contrast, saturation, in that order). They run on host numpy
arrays, image and mask together, with the generator grain derives from the seed and the
element's position in the stream.
"""

import ml_collections
import numpy as np
from PIL import Image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255


def normalize(image: np.ndarray) -> np.ndarray:
  """RGB in [0, 255] (any dtype) -> float32 standardised with the ImageNet mean and std."""
  return (np.asarray(image, np.float32) - IMAGENET_MEAN) / IMAGENET_STD


def shift_scale_rotate(
  image: np.ndarray, mask: np.ndarray, shift: tuple[float, float], scale: float, angle_deg: float
) -> tuple[np.ndarray, np.ndarray]:
  """Rotates by `angle_deg` and scales about the centre, then shifts by `shift` (dy, dx) pixels.

  Bilinear image, nearest mask, reflect-101 border (reflection padding just wide enough for the
  transform, then PIL's affine warp: an order of magnitude faster than scipy.ndimage).
  """
  height, width = mask.shape
  centre = np.array([(width - 1) / 2, (height - 1) / 2])
  angle = np.deg2rad(angle_deg)
  # Output pixel (x, y) -> input: invert  out = s R (in - c) + c + t, R counter-clockwise on
  # screen (y down) for a positive angle, as cv2/albumentations.
  rotation = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
  inverse = rotation.T / scale
  offset = centre - inverse @ (centre + np.asarray(shift)[::-1])
  corners = np.array([[0, 0], [width - 1, 0], [0, height - 1], [width - 1, height - 1]])
  reach = corners @ inverse.T + offset
  pad = int(np.ceil(max(0.0, -reach.min(), (reach - [width - 1, height - 1]).max()))) + 2
  offset = offset + pad
  # PIL samples at pixel centres (index + 0.5): shift the offset accordingly.
  pil_offset = offset + 0.5 - inverse @ [0.5, 0.5]
  coefficients = (*inverse[0], pil_offset[0], *inverse[1], pil_offset[1])
  padded_image = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
  padded_mask = np.pad(mask, pad, mode="reflect")
  warp = lambda array, resample: np.asarray(
    Image.fromarray(array).transform((width, height), Image.AFFINE, coefficients, resample=resample)
  )
  return warp(padded_image, Image.BILINEAR), warp(padded_mask, Image.NEAREST)


def color_jitter(
  image: np.ndarray, rng: np.random.Generator, brightness: float, contrast: float, saturation: float
) -> np.ndarray:
  """Random brightness, contrast and saturation factors; float32 result clipped to [0, 255]."""
  image = np.asarray(image, np.float32) * rng.uniform(1 - brightness, 1 + brightness)
  gray = image @ np.array([0.299, 0.587, 0.114], np.float32)
  image = (image - gray.mean()) * rng.uniform(1 - contrast, 1 + contrast) + gray.mean()
  gray = image @ np.array([0.299, 0.587, 0.114], np.float32)
  factor = rng.uniform(1 - saturation, 1 + saturation)
  image = gray[..., None] + (image - gray[..., None]) * factor
  return np.clip(image, 0, 255)


class Augment:
  """grain RandomMap-style callable: (example, rng) -> example with augmented image and mask."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config.to_dict()

  @property
  def active(self) -> bool:
    c = self.config
    return c["hflip"] or c["vflip"] or c["rot90"] or c["shift_scale_rotate"] or c["color_jitter"]

  def __call__(self, example: dict, rng: np.random.Generator) -> dict:
    c = self.config
    image, mask = example["image"], example["mask"]
    if c["hflip"] and rng.random() < 0.5:
      image, mask = image[:, ::-1], mask[:, ::-1]
    if c["vflip"] and rng.random() < 0.5:
      image, mask = image[::-1], mask[::-1]
    if c["rot90"]:
      turns = int(rng.integers(4))
      image, mask = np.rot90(image, turns), np.rot90(mask, turns)
    if c["shift_scale_rotate"] and rng.random() < c["ssr_prob"]:
      size = np.array(mask.shape)
      image, mask = shift_scale_rotate(
        image,
        mask,
        shift=rng.uniform(-c["shift_limit"], c["shift_limit"], 2) * size,
        scale=rng.uniform(1 - c["scale_limit"], 1 + c["scale_limit"]),
        angle_deg=rng.uniform(-c["rotate_limit"], c["rotate_limit"]),
      )
    if c["color_jitter"]:
      image = color_jitter(image, rng, c["brightness"], c["contrast"], c["saturation"])
    return {**example, "image": np.ascontiguousarray(image), "mask": np.ascontiguousarray(mask)}
