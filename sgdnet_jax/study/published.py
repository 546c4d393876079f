"""The paper's published numbers (Shi, Zhu & Swamy, MIDL 2026 submission), Tables 1-5.

As printed: Dice, IoU and PQ in percent, HD95 in pixels (convention not stated), Params in
millions, "GFLOPs" (multiply-accumulates at 256x256). Each row names the method as the paper
does and, where this project trains it, the variant (`sgdnet_jax/core/variants.py`) it compares
with. `report --paper-tables --published` prints them beside the measured values.
"""

# table -> (title, dataset, [(method as printed, variant or None, {column: value})]).
TABLES = {
  "1": (
    "Table 1: ISIC 2016 -> PH2 (trained on ISIC 2016, tested on PH2)",
    "isic2016",
    [
      ("MSCA (Bi et al., 2016)", None, {"dice": 81.57, "iou": 72.33}),
      ("Bi et al. (2017)", None, {"dice": 90.66, "iou": 83.99}),
      ("Lee et al. (2020)", None, {"dice": 91.84, "iou": 84.30}),
      ("CTO (Lin et al., 2025)", "cto", {"dice": 92.56, "iou": 86.60}),
      ("SGD-Net", "sgdnet", {"dice": 92.93, "iou": 87.29}),
    ],
  ),
  "2": (
    "Table 2: ISIC 2018, 5-fold cross-validation, with complexity",
    "isic2018",
    [
      (
        "U-Net (Ronneberger et al., 2015)",
        None,
        {"params_m": 7.78, "gmacs": 14.59, "dice": 82.92, "iou": 77.56},
      ),
      (
        "LeViT (Graham et al., 2021)",
        None,
        {"params_m": 64.23, "gmacs": 23.57, "dice": 86.98, "iou": 79.68},
      ),
      (
        "TransUNet (Chen et al., 2024)",
        None,
        {"params_m": 114.65, "gmacs": 37.02, "dice": 89.97, "iou": 83.32},
      ),
      (
        "CTO (Lin et al., 2025)",
        "cto",
        {"params_m": 62.22, "gmacs": 22.70, "dice": 90.63, "iou": 83.97},
      ),
      ("SGD-Net", "sgdnet", {"params_m": 75.88, "gmacs": 36.23, "dice": 91.41, "iou": 84.96}),
    ],
  ),
  "3": (
    "Table 3: CoNIC, split 7:1:2",
    "conic",
    [
      ("U-Net", None, {"dice": 78.36, "iou": 66.39, "pq": 64.41}),
      ("Att-UNet (Schlemper et al., 2019)", None, {"dice": 79.44, "iou": 66.11, "pq": 65.28}),
      ("TransUNet", None, {"dice": 77.03, "iou": 64.35, "pq": 64.02}),
      ("CTO", "cto", {"dice": 80.67, "iou": 67.97, "pq": 67.17}),
      ("SGD-Net", "sgdnet", {"dice": 81.61, "iou": 69.46, "pq": 68.79}),
    ],
  ),
  "4": (
    "Table 4: ablation of SGD-Net's parts, ISIC 2018",
    "isic2018",
    [
      ("(1) baseline (Res2Net + ViT)", "baseline", {"dice": 89.57, "iou": 82.91, "hd95": 32.63}),
      ("(2) + SGE (guidance added)", "sge_add", {"dice": 90.39, "iou": 83.43, "hd95": 18.58}),
      ("(3) + SGE + ContMix", "sge_contmix", {"dice": 90.95, "iou": 84.22, "hd95": 24.21}),
      ("(4) SGD-Net", "sgdnet", {"dice": 91.41, "iou": 84.96, "hd95": 16.09}),
    ],
  ),
  "5": (
    "Table 5: inside SGDC, ISIC 2018",
    "isic2018",
    [
      ("SGD-Net", "sgdnet", {"dice": 91.41, "iou": 84.96, "hd95": 16.09}),
      (
        "with self-guidance (kernels from F_X)",
        "sgdc_self_guidance",
        {"dice": 90.52, "iou": 83.65, "hd95": 21.34},
      ),
      ("without the local branch", "sgdc_no_local", {"dice": 90.88, "iou": 84.10, "hd95": 18.95}),
      (
        "without the dynamic branch",
        "sgdc_no_dynamic",
        {"dice": 89.92, "iou": 82.55, "hd95": 25.12},
      ),
    ],
  ),
}
