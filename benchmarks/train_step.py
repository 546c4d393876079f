"""Full SGD-Net train step and eval forward: sgdnet_jax vs the PyTorch reference, same threads.

Run from the repository root:

    JAX_PLATFORMS=cpu .venv/bin/python -m benchmarks.train_step [--quick] [--threads N]
        [--batches 2,8] [--dtypes float32,bfloat16] [--size 256] [--profile]

JAX: the real training step, `sgdnet_jax.train.loop.make_train_step` (forward, loss, backward,
the CTO optimiser: element-wise clip, coupled weight decay, Adam; donated state), and the jitted
eval forward (all outputs), on `configs/common.py`'s full-size sgdnet model, one class.
PyTorch: `third_party.torch_reference.sgdnet.SGDNet(1)` in train mode with the same loss (BCE +
soft Dice on o1..o3, 3 x soft Dice of the edge probability against the boundary ring), the
gradients clamped to +-0.5 and `torch.optim.Adam(betas=(0.9, 0.99), weight_decay=1e-5,
fused=True)`; the eval forward in eval mode under `no_grad`.

Reported per batch size and dtype: best-of-N seconds, images/s, the JAX / PyTorch time ratio,
compile time (persistent compilation cache disabled, so it is the real cost), peak memory (see
benchmarks/common.py), the FLOPs XLA executes (cost analysis) and the achieved FLOP/s.
CPU defaults: batch 2 and 8, float32 (`--quick`: batch 2). On a GPU (jax.default_backend() ==
'gpu') the same script runs its GPU section: batch 16 in float32 and bfloat16 (`--quick`: bf16
only), with the PyTorch reference on CUDA (autocast to bfloat16 for the bf16 rows) when torch
has CUDA; JAX memory is then also read from the device allocator (`peak_bytes_in_use`).
Targets (issue 7, CPU, fp32, batch 2, 256^2): train step <= 0.6x and eval forward <= 0.4x the
PyTorch reference's time. Where one is missed the script prints the XLA thunk time per
top-level module and pass, and PyTorch's top aten ops. Writes benchmarks/results/train_step.json.
"""

import argparse
import os
import pathlib
import sys

if __package__ in (None, ""):  # run as a file: make the repository importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import common

TRAIN_TARGET, EVAL_TARGET = 0.6, 0.4
STEPS_PER_EPOCH, EPOCHS = 100, 50  # only shape the learning-rate schedule


def _inputs(batch: int, size: int, seed: int = 0):
  import numpy as np

  rng = np.random.default_rng(seed)
  images = rng.standard_normal((batch, size, size, 3)).astype(np.float32)
  rows, cols = np.ogrid[:size, :size]
  masks = np.stack(
    [
      ((rows - size / 2 - 10 * i) ** 2 + (cols - size / 2) ** 2 < (size / 4) ** 2)
      for i in range(batch)
    ]
  ).astype(np.uint8)
  return images, masks


def _module_scope(parts):
  """SGDNet/<child> for the network (sgdc split by position), 'optimizer/loss' for the rest."""
  if not parts or parts[0] != "SGDNet":
    return "optimizer, loss and glue"
  if len(parts) >= 3 and parts[1] == "sgdc":
    return "/".join(parts[1:3])
  return parts[1] if len(parts) > 1 else "SGDNet (top level)"


class JaxSide:
  """Compiled train step and eval forward for one (batch, dtype)."""

  def __init__(self, batch: int, size: int, dtype: str):
    import jax

    from configs import common as config_common
    from sgdnet_jax import models
    from sgdnet_jax.core import sharding
    from sgdnet_jax.train import loop, optimizer
    from sgdnet_jax.train import state as state_lib

    config = config_common.experiment("sgdnet", 1)
    config.model.dtype = dtype
    model = models.build(config.model)
    tx, schedule = optimizer.make_optimizer(
      config.optimizer, STEPS_PER_EPOCH, STEPS_PER_EPOCH * EPOCHS
    )
    mesh = sharding.make_mesh(config.mesh)
    self.state, shardings = state_lib.create_state(
      model, tx, (1, size, size, 3), jax.random.PRNGKey(0), mesh, config.mesh.fsdp_min_size
    )
    images, masks = _inputs(batch, size)
    self.batch = sharding.global_batch({"image": images, "mask": masks}, mesh)
    train_step = loop.make_train_step(model, tx, schedule, config.loss, mesh, shardings)
    self.train_compile_s, self.train = common.timed(
      lambda: train_step.lower(self.state, self.batch).compile()
    )

    def forward(variables, images):
      outputs = model.apply(variables, images, train=False)
      return {k: v for k, v in outputs.items() if k != "aux"}

    eval_forward = jax.jit(forward)
    self.variables = {"params": self.state.params, "batch_stats": self.state.batch_stats}
    self.eval_compile_s, self.eval = common.timed(
      lambda: eval_forward.lower(self.variables, self.batch["image"]).compile()
    )
    # The state is donated by the step: keep only the newest one alive.
    self.variables = jax.tree_util.tree_map(lambda x: x.copy(), self.variables)

  def step(self):
    import jax

    self.state, metrics = self.train(self.state, self.batch)
    jax.block_until_ready(metrics["loss"])
    return metrics

  def forward(self):
    import jax

    return jax.block_until_ready(self.eval(self.variables, self.batch["image"]))


class TorchSide:
  """The PyTorch reference SGD-Net: a train step (same loss and optimiser) and an eval forward."""

  def __init__(self, batch: int, size: int, dtype: str, device: str):
    import numpy as np
    import torch

    from sgdnet_jax.train import losses
    from third_party.torch_reference import sgdnet as torch_sgdnet

    torch.manual_seed(0)
    self.torch = torch
    self.device = device
    self.model = torch_sgdnet.SGDNet(1).to(device)
    # fused=True is PyTorch's fastest Adam (on CPU ~10x faster than its default loop): the strongest
    # reference, with the same update (coupled weight decay, eps outside the square root).
    self.optimizer = torch.optim.Adam(
      self.model.parameters(), lr=1e-4, betas=(0.9, 0.99), eps=1e-8, weight_decay=1e-5, fused=True
    )
    images, masks = _inputs(batch, size)
    target = (masks > 0).astype(np.float32)
    edge = np.asarray(losses.boundary_target(target))
    self.images = torch.tensor(images).permute(0, 3, 1, 2).contiguous().to(device)
    self.target = torch.tensor(target).to(device)
    self.edge_target = torch.tensor(edge).to(device)
    self.autocast = dtype == "bfloat16"
    self.sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

  def _dice(self, prob, target):
    intersection = (prob * target).sum((1, 2))
    return 1.0 - (2.0 * intersection + 1.0) / (prob.sum((1, 2)) + target.sum((1, 2)) + 1.0)

  def _loss(self, outputs):
    functional = self.torch.nn.functional
    o3, o2, o1, edge = outputs
    loss = 0.0
    for logits in (o1, o2, o3):
      z = logits[:, 0].float()
      bce = functional.binary_cross_entropy_with_logits(z, self.target, reduction="none")
      bce = bce.mean((1, 2))
      loss = loss + (bce + self._dice(self.torch.sigmoid(z), self.target)).mean()
    return loss + 3.0 * self._dice(edge[:, 0].float(), self.edge_target).mean()

  def _autocast(self):
    return self.torch.autocast(
      self.device.split(":")[0], dtype=self.torch.bfloat16, enabled=self.autocast
    )

  def step(self):
    self.model.train()
    self.optimizer.zero_grad(set_to_none=True)
    with self._autocast():
      outputs = self.model(self.images)
    loss = self._loss(outputs)
    loss.backward()
    for p in self.model.parameters():
      if p.grad is not None:
        p.grad.clamp_(-0.5, 0.5)
    self.optimizer.step()
    self.sync()
    return float(loss.detach())

  def forward(self):
    self.model.eval()
    with self.torch.no_grad(), self._autocast():
      outputs = self.model(self.images)
    self.sync()
    return outputs

  def resident_bytes(self, training: bool) -> int:
    tensors = [
      *self.model.parameters(),
      *self.model.buffers(),
      self.images,
      self.target,
      self.edge_target,
    ]
    if training:
      tensors += [
        t
        for s in self.optimizer.state.values()
        for t in s.values()
        if isinstance(t, self.torch.Tensor)
      ]
    return common.tensor_bytes(tensors)


def measure(batch: int, size: int, dtype: str, repeats: int, torch_device, profile: bool):
  import jax

  row = {"batch": batch, "size": size, "dtype": dtype, "backend": jax.default_backend()}
  print(f"[batch {batch}, {dtype}] compiling ...", flush=True)
  jax_side = JaxSide(batch, size, dtype)
  row["jax_train_compile_s"] = jax_side.train_compile_s
  row["jax_eval_compile_s"] = jax_side.eval_compile_s
  for name, compiled in (("train", jax_side.train), ("eval", jax_side.eval)):
    memory = common.jax_memory(compiled)
    row[f"jax_{name}_peak_bytes"] = memory["peak_bytes"]
    row[f"jax_{name}_memory"] = memory
    row[f"jax_{name}_flops"] = common.jax_flops(compiled)
  candidates = {"jax_train": jax_side.step, "jax_eval": jax_side.forward}
  torch_side = None
  if torch_device:
    torch_side = TorchSide(batch, size, dtype, torch_device)
    candidates.update(torch_train=torch_side.step, torch_eval=torch_side.forward)
  times = common.interleaved_times(candidates, repeats)
  for name, t in times.items():
    row[f"{name}_s"] = t["best_s"]
    row[f"{name}_median_s"] = t["median_s"]
    row[f"{name}_images_per_s"] = batch / t["best_s"]
  for name in ("train", "eval"):
    flops = row[f"jax_{name}_flops"]
    row[f"jax_{name}_tflops_per_s"] = None if flops is None else flops / row[f"jax_{name}_s"] / 1e12
  if jax.default_backend() == "gpu":
    # The allocator's peak over the whole run so far.
    row["jax_device_peak_bytes_so_far"] = common.jax_device_peak_bytes()
  if torch_side:
    row["torch_train_peak_bytes"] = common.torch_peak_bytes(
      torch_side.step, torch_side.resident_bytes(True), torch_device
    )
    row["torch_eval_peak_bytes"] = common.torch_peak_bytes(
      torch_side.forward, torch_side.resident_bytes(False), torch_device
    )
    row["train_vs_torch"] = row["jax_train_s"] / row["torch_train_s"]
    row["eval_vs_torch"] = row["jax_eval_s"] / row["torch_eval_s"]
  profiles = {}
  targeted = batch == 2 and dtype == "float32" and torch_side is not None
  missed = targeted and (row["train_vs_torch"] > TRAIN_TARGET or row["eval_vs_torch"] > EVAL_TARGET)
  if profile or missed:
    profiles["jax_train"] = common.xla_profile(
      jax_side.step, jax_side.train.as_text(), scope_fn=_module_scope, top=16, runs=2
    )
    profiles["jax_eval"] = common.xla_profile(
      jax_side.forward, jax_side.eval.as_text(), scope_fn=_module_scope, top=12, runs=2
    )
    if torch_side:
      profiles["torch_train"] = common.torch_op_profile(torch_side.step, top=10)
      profiles["torch_eval"] = common.torch_op_profile(torch_side.forward, top=10)
  return row, profiles


COLUMNS = (
  ("batch", "B", "d"),
  ("dtype", "dtype", "s"),
  ("torch_train_s", "torch step s", ".3f"),
  ("jax_train_s", "jax step s", ".3f"),
  ("train_vs_torch", "x torch", ".2f"),
  ("jax_train_images_per_s", "jax img/s", ".2f"),
  ("torch_train_images_per_s", "torch img/s", ".2f"),
  ("torch_eval_s", "torch eval s", ".3f"),
  ("jax_eval_s", "jax eval s", ".3f"),
  ("eval_vs_torch", "x torch", ".2f"),
  ("jax_eval_images_per_s", "jax eval img/s", ".2f"),
  ("jax_train_compile_s", "compile step s", ".1f"),
  ("jax_eval_compile_s", "compile eval s", ".1f"),
)
COLUMNS_COST = (
  ("batch", "B", "d"),
  ("dtype", "dtype", "s"),
  ("jax_train_gflops", "step GFLOP", ".1f"),
  ("jax_train_gflops_per_s", "step GFLOP/s", ".1f"),
  ("jax_eval_gflops", "eval GFLOP", ".1f"),
  ("jax_eval_gflops_per_s", "eval GFLOP/s", ".1f"),
  ("torch_train_mib", "torch step MiB", ".0f"),
  ("jax_train_mib", "jax step MiB", ".0f"),
  ("torch_eval_mib", "torch eval MiB", ".0f"),
  ("jax_eval_mib", "jax eval MiB", ".0f"),
)


def _derived(row):
  out = dict(row)
  for key in list(row):
    if key.endswith("_peak_bytes"):
      out[key.replace("_peak_bytes", "_mib")] = common.mib(row[key])
  for name in ("train", "eval"):
    flops = row.get(f"jax_{name}_flops")
    if flops is not None:
      out[f"jax_{name}_gflops"] = flops / 1e9
      out[f"jax_{name}_gflops_per_s"] = flops / row[f"jax_{name}_s"] / 1e9
  return out


def check_targets(rows) -> list:
  lines = []
  for row in rows:
    if row["batch"] != 2 or row["dtype"] != "float32" or "train_vs_torch" not in row:
      continue
    for name, target in (("train", TRAIN_TARGET), ("eval", EVAL_TARGET)):
      ratio = row[f"{name}_vs_torch"]
      lines.append(
        f"batch 2 fp32 {name}: {ratio:.2f}x torch (target <= {target}) "
        f"{'met' if ratio <= target else 'MISSED'}"
      )
  return lines


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--quick", action="store_true", help="batch 2 only (GPU: batch 16 in bf16 only)"
  )
  parser.add_argument(
    "--batches", default=None, help="comma-separated batch sizes (default 2,8; GPU 16)"
  )
  parser.add_argument(
    "--dtypes", default=None, help="comma-separated float32/bfloat16 (default float32; GPU both)"
  )
  parser.add_argument("--size", type=int, default=256, help="image size (a multiple of 128)")
  parser.add_argument(
    "--repeats",
    type=int,
    default=None,
    help="timed runs per candidate after a warm-up (default 2; GPU 5)",
  )
  common.add_common_arguments(parser)
  args = parser.parse_args(argv)

  threads = common.configure_threads(args.threads)
  import jax

  jax.config.update("jax_enable_compilation_cache", False)  # report real compile times
  gpu = jax.default_backend() == "gpu"
  batches = (
    [int(b) for b in args.batches.split(",")]
    if args.batches
    else ([16] if gpu else ([2] if args.quick else [2, 8]))
  )
  dtypes = (
    args.dtypes.split(",")
    if args.dtypes
    else ((["bfloat16"] if args.quick else ["float32", "bfloat16"]) if gpu else ["float32"])
  )
  for dtype in dtypes:
    if dtype not in ("float32", "bfloat16"):
      raise ValueError(f"--dtypes: expected float32 or bfloat16, got {dtype!r}")
  repeats = args.repeats or (5 if gpu else 2)
  torch_device = None
  if not args.no_torch:
    import torch

    torch_device = "cuda" if gpu and torch.cuda.is_available() else ("cpu" if not gpu else None)
    if gpu and torch_device is None:
      print("PyTorch has no CUDA here: the reference columns are left empty on this GPU run")
  machine = common.machine_info(threads)
  print(
    f"SGD-Net {args.size}^2 on {jax.default_backend()} ({machine['processor']}), "
    f"{threads} threads for XLA and torch, best of {repeats}",
    flush=True,
  )

  rows, profiles = [], {}
  for dtype in dtypes:
    for batch in batches:
      row, profile = measure(batch, args.size, dtype, repeats, torch_device, args.profile)
      rows.append(row)
      if profile:
        profiles[f"batch{batch}_{dtype}"] = profile
      reference = (
        f" (torch {row['torch_train_s']:.3f} / {row['torch_eval_s']:.3f})"
        if "torch_train_s" in row
        else ""
      )
      print(
        f"  step {row['jax_train_s']:.3f} s, eval {row['jax_eval_s']:.3f} s{reference}", flush=True
      )
  table = [_derived(r) for r in rows]
  print("\nTime (best of the repeats; 'x torch' = JAX / PyTorch reference)")
  print(common.format_table(table, COLUMNS))
  print("\nExecuted FLOPs (XLA cost analysis) and peak memory")
  print(common.format_table(table, COLUMNS_COST))
  for key, profile in profiles.items():
    for name in ("train", "eval"):
      print()
      print(common.format_profile(profile[f"jax_{name}"], f"[{key}] JAX {name}"))
      if f"torch_{name}" in profile:
        print(common.format_torch_profile(profile[f"torch_{name}"], f"[{key}] PyTorch {name}"))
  targets = check_targets(rows)
  if targets:
    print("\nTargets:")
    for line in targets:
      print("  " + line)
  machine["load_average_at_end"] = os.getloadavg()  # with the start: how busy the machine was
  path = common.write_json(
    "train_step",
    {"machine": machine, "repeats": repeats, "results": rows, "profiles": profiles},
    args.output,
  )
  print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
