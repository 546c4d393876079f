#!/usr/bin/env bash
# Regenerates the README's example pictures (docs/images/) from the embedded demo data:
#   1. the example study: sweep `example` of configs/demo.py (baseline and sgdnet, 2 seeds, 4 epochs
#      each) trained locally, then `report` against the baseline;
#   2. prediction on demo test images at their native 192 px: resized to the training size (the
#      default), with flip test-time augmentation, and tiled with 96 px windows (no resizing);
#   3. Figure 2: SGD-Net and CTO trained as configs/demo.py says (6 epochs each), then `figure`.
# About 30 minutes on a 2-core CPU. Run from the repository root: bash docs/pictures.sh
set -euo pipefail
PY=${PY:-.venv/bin/python}
ROOT=${ROOT:-runs/demo_study}
OUT=docs/images

"$PY" -c 'from sgdnet_jax import demo
from sgdnet_jax.core import config_utils
demo.ensure_config_data(config_utils.load_config("configs/demo.py"))'
"$PY" -m sgdnet_jax.main sweep --config configs/demo.py:sweep=example --root "$ROOT" --local
"$PY" -m sgdnet_jax.main report --root "$ROOT" --baseline baseline --split test
mkdir -p "$OUT"
cp "$ROOT/report_dice.png" "$OUT/report_example_dice.png"
cp "$ROOT/curves.png" "$OUT/report_example_curves.png"
cp "$ROOT/report.md" "$OUT/report_example.md"

# Four test images of the demo split at the generator's 192 px.
IMAGES="$ROOT/native_images"
rm -rf "$IMAGES" && mkdir -p "$IMAGES"
"$PY" - "$IMAGES" <<'EOF'
import json, shutil, sys
test = json.load(open("data/demo/prepared/splits/seeded_712.json"))["folds"][0]["test"][:4]
for case in test:
  shutil.copy(f"data/demo/source/images/{case}.jpg", sys.argv[1])
EOF
MODEL="$ROOT/sgdnet/fold0/seed0"
for mode in "resize --tta none" "flip --tta flip" "tile --tile 96 --overlap 0.5"; do
  set -- $mode
  name=$1
  shift
  "$PY" -m sgdnet_jax.main predict --config configs/demo.py:variant=sgdnet,epochs=4 \
    --workdir "$MODEL" --images "$IMAGES" --out "$ROOT/predict_$name" --save-probabilities \
    --overwrite "$@"
done
"$PY" - "$ROOT" "$OUT/predict_tta_tiling.png" <<'EOF'
import pathlib, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

root, out = pathlib.Path(sys.argv[1]), sys.argv[2]
modes = [("resize", "resized to 96 px (default)"), ("flip", "--tta flip"),
         ("tile", "--tile 96 (native 192 px)")]
stems = sorted(p.stem for p in (root / "native_images").iterdir())
fig, axes = plt.subplots(len(stems), 1 + len(modes), figsize=(3 * (1 + len(modes)), 3 * len(stems)))
for index, (row, stem) in enumerate(zip(axes, stems)):
  image = np.asarray(Image.open(root / "native_images" / f"{stem}.jpg"))
  truth = np.asarray(Image.open(f"data/demo/source/masks/{stem}_segmentation.png")) > 0
  row[0].imshow(image)
  row[0].contour(truth, levels=[0.5], colors="lime", linewidths=1)
  row[0].set_title(f"{stem}, ground truth in green" if index == 0 else stem, fontsize=9)
  for ax, (mode, title) in zip(row[1:], modes):
    probability = np.load(root / f"predict_{mode}" / "probabilities" / f"{stem}.npy")
    ax.imshow(probability.astype(np.float32), cmap="magma", vmin=0, vmax=1)
    ax.contour(truth, levels=[0.5], colors="lime", linewidths=1)
    if index == 0:
      ax.set_title(f"probability, {title}", fontsize=9)
for ax in axes.ravel():
  ax.set_axis_off()
fig.tight_layout()
fig.savefig(out, dpi=60)
print("wrote", out)
EOF

# Figure 2 from two demo runs: SGD-Net (its guidance) against CTO (its boundary map).
"$PY" -m sgdnet_jax.main train --config configs/demo.py:variant=sgdnet --workdir runs/figure2/sgdnet
"$PY" -m sgdnet_jax.main train --config configs/demo.py:variant=cto --workdir runs/figure2/cto
"$PY" -m sgdnet_jax.main figure --config configs/demo.py:variant=sgdnet \
  --workdir runs/figure2/sgdnet --config-b configs/demo.py:variant=cto --workdir-b runs/figure2/cto \
  --split test --limit 2 --out runs/figure2/figure --overwrite
cp runs/figure2/figure/figure.png "$OUT/figure2_demo.png"
