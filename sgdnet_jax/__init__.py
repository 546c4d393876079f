"""sgdnet_jax: SGD-Net (Structure-Guided Dynamic Convolution) and its baselines in JAX/Flax."""

import os

# etils.epath, the path type of workdirs, datasets and Orbax, would read gs:// through
# TensorFlow's gfile because TensorFlow is installed; pinned here to fsspec with gcsfs
# (requirements.txt), the one client tests/test_core_paths.py exercises. etils reads this once.
os.environ["EPATH_USE_TF"] = "false"
