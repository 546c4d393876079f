"""Every config field, its default and what it means: the one place to read a whole config.

  python -m sgdnet_jax.main config --config configs/default.py   # prints it resolved

The experiment files (`isic2018.py`, `isic2016_ph2.py`, `conic.py`, `folder.py`, `demo.py`,
`test.py`) start from `get_config()` and change a few fields; the package only validates fields
(`check()` where they are used), it holds no defaults. The named variants (presets of the model
fields below) live in `sgdnet_jax/core/variants.py`, shared with the porting of upstream
checkpoints; loading a config imports that list and no JAX. Every field is also a command-line
override: `--config.model.sgdc.kernel_size=5`.
"""

import ml_collections

from sgdnet_jax.core.variants import VARIANTS


def get_config(arg=None) -> ml_collections.ConfigDict:
  """The full-size SGD-Net with CTO's optimisation setup (SPEC 0.8); `arg` is not used."""
  del arg
  config = ml_collections.ConfigDict()
  config.seed = 0  # initialisation, dropout and data shuffling all derive from it
  config.prng_impl = "rbg"  # jax.random implementation; rbg compiles much faster than threefry
  config.global_batch_size = 16  # images per update over all devices and hosts
  config.eval_batch_size = 16  # images per evaluation step over all devices and hosts
  config.epochs = 50  # training length in epochs; the poly schedule decays per epoch
  config.total_steps = 0  # training length in steps instead of epochs (0: epochs x steps/epoch)
  config.log_every_steps = 10  # progress line and scalars every this many steps
  config.eval_every_epochs = 1  # validation Dice every this many epochs (0: none, no best ckpt)
  config.checkpoint_every_steps = 0  # checkpoint period in steps (0: at the end of every epoch)
  config.tensorboard = True  # TensorBoard event files beside metrics.jsonl (imports TensorFlow)
  config.keep_checkpoints = 2  # latest checkpoints kept in <workdir>/checkpoints
  config.eval_splits = ("test",)  # splits a `sweep` evaluates after training each run
  # Params + BN statistics from a `convert` output or another workdir; wins over
  # model.pretrained, and a checkpoint in the workdir (resume) wins over both.
  config.init_from = ""
  config.demo_cases = 0  # synthetic cases the demo generates (configs/demo.py; 0: not a demo)
  config.distributed = "auto"  # multi-host start: auto (where JAX finds a cluster) | on | off
  # XLA compilation cache ('' off; the environment's $JAX_COMPILATION_CACHE_DIR wins).
  config.compilation_cache_dir = "~/.cache/sgdnet_jax/xla"

  config.model = model = ml_collections.ConfigDict()
  model.variant = "sgdnet"  # the name of the preset applied (core/variants.py); a record only
  model.num_classes = 1  # 1: one sigmoid logit per pixel; 2: softmax over background/foreground
  model.backbone_depth = 50  # Res2Net v1b depth: 50 or 101 (14: one block a stage, CPU tests)
  # ImageNet-pretrained encoder (as the paper and CTO): a name (res2net50_v1b_26w_4s,
  # res2net101_v1b_26w_4s: downloaded once into $SGDNET_JAX_CACHE), a local .pth/.safetensors/.npz
  # (res2net50_v1b or timm res2net50d layout), an http(s) URL, or 'none' (random initialisation).
  model.pretrained = "res2net50_v1b_26w_4s"
  model.backbone_base_planes = 64  # Res2Net width (64 is the standard 26w x 4s network)
  model.decoder_channels = 64  # channels of the reduce convs, DM decoders and the EAM
  model.trans_patch_sizes = (32, 16, 8, 4)  # patch sizes of CTO's four transformer branches
  model.edge_branch = "sge"  # sge (structure guidance extractor) | eam (CTO) | none
  model.skip_fusion = "sgdc"  # sgdc | guidance_add | contmix | edge_gate (CTO) | none
  model.head_dropout = 0.1  # dropout in the dual-attention head
  # Convolution lowering: lax (everywhere), cpu_matmul (faster CPU training) or auto (the CPU
  # one when traced on a CPU backend); `export` chooses it from its target platforms.
  model.conv_impl = "auto"
  model.dtype = "float32"  # compute: float32 | bfloat16 (params, BN stats stay float32) | float64
  # Functional knockouts of the forward pass (docs/ablations.md; set by `ablate`): guidance=zero,
  # guidance=shuffle, sgdc.dynamic=off, sgdc.local=off, sgdc=identity, edge=off. Same parameters.
  model.knockouts = ()
  model.sge = sge = ml_collections.ConfigDict()
  sge.mid_channels = 256  # channels of the SGE's projected x1/x4 features
  sge.guide_channels = 16  # channels of the guidance map g handed to the SGDCs
  sge.reduction = 4  # channel reduction inside the SGE's attention
  model.sgdc = sgdc = ml_collections.ConfigDict()
  sgdc.num_heads = 4  # groups of channels sharing one dynamic kernel
  sgdc.kernel_size = 7  # size k of the dynamic kernels (the local branch is a fixed 3x3)
  sgdc.guidance = "sge"  # what generates the dynamic kernels: sge (g and F_X) | self (F_X only)
  sgdc.local_branch = True  # keep the static depthwise (local) branch
  sgdc.dynamic_branch = True  # keep the guidance-generated dynamic branch
  sgdc.form = "official"  # official (released code) | paper (Eqs. 3-4 as printed)
  sgdc.impl = "shifted"  # shifted (sum of k^2 shifted views) | patches (patch tensor + einsum)
  sgdc.mlp_ratio = 4.0  # hidden width of the block's MLP relative to its channels
  sgdc.layer_scale_init = 1e-6  # initial layer-scale of the residual branches
  sgdc.drop_path = 0.0  # stochastic depth rate of the residual branches
  model.contmix = contmix = ml_collections.ConfigDict()
  contmix.kernel_size = 7  # ContMix dynamic kernel size (skip_fusion='contmix' only)
  contmix.smk_size = 5  # ContMix static (small) kernel size
  contmix.num_heads = 2  # ContMix kernel groups
  contmix.mlp_ratio = 4.0  # ContMix MLP hidden width relative to its channels

  config.data = data = ml_collections.ConfigDict()
  data.dir = ""  # prepared dataset folder (the --out of `prepare`)
  data.protocol = ""  # split protocol in <dir>/splits ('' = the dataset's default)
  data.fold = 0  # fold of a k-fold protocol (0 otherwise)
  data.train_split = "train"  # the protocol's split trained on
  data.val_split = "val"  # the protocol's split validated on (best checkpoint)
  data.test_split = "test"  # the protocol's split `evaluate --split test` scores
  data.image_size = 0  # training size (square); 0: the size data.dir was prepared at
  data.num_workers = 0  # grain worker processes (0: threads in this process, best on few cores)
  data.read_threads = 4  # threads building batches, per process
  data.prefetch = 8  # batches built ahead, per process
  # Further evaluation sets from other prepared datasets, name -> ConfigDict(dir, protocol, fold,
  # split); e.g. `ph2` for the ISIC 2016 -> PH2 protocol. `evaluate --split <name>` uses them.
  data.extra_eval = ml_collections.ConfigDict()
  data.augment = augment = ml_collections.ConfigDict()
  augment.hflip = False  # random horizontal flip
  augment.vflip = False  # random vertical flip
  augment.rot90 = False  # uniform over 0, 90, 180, 270 degrees
  augment.shift_scale_rotate = False  # albumentations-style ShiftScaleRotate
  augment.ssr_prob = 0.5  # probability of ShiftScaleRotate
  augment.shift_limit = 0.1  # shift as a fraction of the image size
  augment.scale_limit = 0.1  # scale in [1 - limit, 1 + limit]
  augment.rotate_limit = 45.0  # rotation in degrees, uniform in [-limit, limit]
  augment.color_jitter = False  # brightness, contrast and saturation jitter
  augment.brightness = 0.2  # factor in [1 - b, 1 + b]
  augment.contrast = 0.2  # factor in [1 - c, 1 + c]
  augment.saturation = 0.2  # factor in [1 - s, 1 + s]

  config.optimizer = optimizer = ml_collections.ConfigDict()
  optimizer.lr = 1e-4  # initial learning rate (CTO)
  optimizer.poly_power = 0.9  # lr(e) = lr * (1 - e / epochs) ** power, e the 0-based epoch
  optimizer.grad_clip = 0.5  # element-wise gradient clip (0: off)
  optimizer.weight_decay = 1e-5  # coupled L2 added to the gradient before Adam (0: off)
  optimizer.b1 = 0.9  # Adam beta1
  optimizer.b2 = 0.99  # Adam beta2
  optimizer.eps = 1e-8  # Adam epsilon

  config.loss = loss = ml_collections.ConfigDict()
  loss.seg = "bce_dice"  # bce_dice (the paper) | structure (CTO's weighted IoU + weighted BCE)
  loss.dice_smooth = 1.0  # smoothing of the soft Dice terms
  loss.edge_weight = 3.0  # lambda of the edge Dice against the outer disk(2) ring (0: off)

  config.mesh = mesh = ml_collections.ConfigDict()
  mesh.data = -1  # devices on the data axis (-1: every device left after fsdp)
  mesh.fsdp = 1  # devices parameters are sharded over (1: replicated parameters)
  mesh.fsdp_min_size = 2**18  # parameters with fewer elements stay replicated

  config.metrics = metrics = ml_collections.ConfigDict()
  metrics.dice = "per_image_mean"  # per_image_mean | global (one confusion matrix)
  metrics.iou = "per_image_mean"  # per_image_mean | global | medi_seg_miou
  metrics.overlap_empty = "score"  # score (both empty = 1) | skip_empty_gt (MedISeg / CTO)
  metrics.hd95 = "pooled"  # pooled (medpy) | max_directed (MONAI)
  metrics.distance_empty = "diagonal"  # one mask empty: diagonal | nan (excluded)
  metrics.distances_on = "host"  # host (k-d tree; fast on CPUs) | device (exact EDT in the step)
  return config


def apply_variant(config: ml_collections.ConfigDict, variant: str) -> ml_collections.ConfigDict:
  """Sets `config.model` to the preset `variant` (see VARIANTS); returns `config`."""
  if variant not in VARIANTS:
    raise ValueError(f"model.variant={variant!r} is not a variant; known: {sorted(VARIANTS)}")
  config.model.variant = variant
  for dotted, value in VARIANTS[variant].items():
    target = config.model
    *parents, leaf = dotted.split(".")
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return config
