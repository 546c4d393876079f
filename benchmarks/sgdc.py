"""SGDC speed and memory: patch+einsum vs patch-free (shifted) vs the PyTorch reference module.

Run from the repository root:

    JAX_PLATFORMS=cpu .venv/bin/python -m benchmarks.sgdc [--batch 2|16] [--threads N]

For the three SGD-Net positions (x1: 256 x 64^2, x2: 512 x 32^2, x3: 1024 x 16^2, guidance
16 x 64^2 as for a 256^2 input) it measures, in one interleaved run with the same thread count:

* the SGDC module forward (eval) and forward+backward (gradients of params, x and guidance for
  a fixed cotangent) for `impl='patches'`, `impl='shifted'` (sgdnet_jax) and
  `third_party.torch_reference.sgdc.SGDC`: best-of-N seconds, compile time, peak memory;
* the dynamic branch alone (`dynamic_conv_patches` / `dynamic_conv_shifted`, forward+backward),
  which is the only code in which the two JAX implementations differ.

Peak memory (see benchmarks/common.py): JAX = arguments + outputs + temporaries of the compiled
executable (XLA's static buffer assignment); PyTorch on CPU = bytes of the tensors alive before
the call (parameters, inputs, cotangent) + the peak of the bytes allocated during it, from the
profiler's allocation events (`profile_memory=True`); on CUDA `max_memory_allocated`.

Targets (issue 7): shifted forward+backward <= 0.25x the PyTorch module's; the shifted module's
peak memory <= 0.25x the patch module's. Where a target is missed the script prints where the
time goes: XLA thunk time per SGDC submodule and pass, and PyTorch's top aten ops.
Results: a table, and benchmarks/results/sgdc.json.
"""

import argparse
import os
import pathlib
import sys

if __package__ in (None, ""):  # run as a file: make the repository importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import common

POSITIONS = (("x1", 256, 64), ("x2", 512, 32), ("x3", 1024, 16))
GUIDE_CHANNELS, GUIDE_SIZE = 16, 64
SPEED_TARGET, MEMORY_TARGET = 0.25, 0.25


def _jax_candidates(dim: int, size: int, batch: int, impls, rng):
  """Per impl: compiled forward / forward+backward executables, their args and sizes."""
  import jax
  import jax.numpy as jnp

  from sgdnet_jax.models import sgdc

  x = jnp.asarray(rng.standard_normal((batch, size, size, dim)), jnp.float32)
  g = jnp.asarray(rng.standard_normal((batch, GUIDE_SIZE, GUIDE_SIZE, GUIDE_CHANNELS)), jnp.float32)
  cotangent = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
  variables = jax.jit(lambda x, g: sgdc.SGDC().init(jax.random.PRNGKey(0), x, g, train=False))(x, g)
  out = {}
  for impl in impls:
    module = sgdc.SGDC(impl=impl)
    forward = jax.jit(lambda v, x, g, m=module: m.apply(v, x, g, train=False))
    backward = jax.jit(
      jax.grad(lambda v, x, g, c, m=module: jnp.vdot(m.apply(v, x, g, train=True), c), (0, 1, 2))
    )
    entry = {}
    for name, fn, args in (
      ("fwd", forward, (variables, x, g)),
      ("fwd_bwd", backward, (variables, x, g, cotangent)),
    ):
      seconds, compiled = common.timed(lambda fn=fn, args=args: fn.lower(*args).compile())
      entry[name] = {
        "compiled": compiled,
        "args": args,
        "compile_s": seconds,
        "memory": common.jax_memory(compiled),
        "flops": common.jax_flops(compiled),
      }
    out[impl] = entry
  return out, (x, g, cotangent, variables)


def _dynamic_branch(dim: int, size: int, batch: int, impls, rng):
  """Forward+backward of the dynamic branch alone: time, compile time, peak memory."""
  import jax
  import jax.numpy as jnp

  from sgdnet_jax.models import sgdc

  x = jnp.asarray(rng.standard_normal((batch, size, size, dim)), jnp.float32)
  logits = jnp.asarray(rng.standard_normal((batch, size, size, 4, 49)), jnp.float32)
  kernels = jax.nn.softmax(logits, axis=-1)
  cotangent = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
  rows = {}
  for impl in impls:
    fn = sgdc.DYNAMIC_CONV[impl]
    grad = jax.jit(jax.grad(lambda x, k, c, fn=fn: jnp.vdot(fn(x, k), c), (0, 1)))
    compile_s, compiled = common.timed(
      lambda grad=grad: grad.lower(x, kernels, cotangent).compile()
    )
    rows[impl] = {
      "compiled": compiled,
      "compile_s": compile_s,
      "memory": common.jax_memory(compiled),
      "run": lambda compiled=compiled: jax.block_until_ready(compiled(x, kernels, cotangent)),
    }
  return rows


def _torch_candidate(dim: int, jax_inputs, device: str):
  import numpy as np
  import torch

  from third_party.torch_reference import sgdc as torch_sgdc

  x, g, cotangent, _ = jax_inputs
  nchw = lambda a: torch.tensor(np.asarray(a)).permute(0, 3, 1, 2).contiguous().to(device)
  module = torch_sgdc.SGDC(dim, guide_ch=GUIDE_CHANNELS).to(device)
  tx, tg, tc = nchw(x), nchw(g), nchw(cotangent)
  tx.requires_grad_(True)
  tg.requires_grad_(True)
  sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

  def forward():
    with torch.no_grad():
      module(tx, tg)
    sync()

  def forward_backward():
    for tensor in (*module.parameters(), tx, tg):
      tensor.grad = None
    (module(tx, tg) * tc).sum().backward()
    sync()

  resident = common.tensor_bytes([*module.parameters(), tx, tg, tc])
  return {"fwd": forward, "fwd_bwd": forward_backward, "resident": resident, "device": device}


def run(args) -> dict:
  import jax
  import numpy as np

  rng = np.random.default_rng(0)
  impls = ("patches", "shifted")
  torch_device = None
  if not args.no_torch:
    import torch

    gpu = jax.default_backend() == "gpu" and torch.cuda.is_available()
    torch_device = "cuda" if gpu else "cpu"
  results, profiles = [], {}
  for position, dim, size in POSITIONS:
    print(f"[{position}] {dim} x {size}^2, batch {args.batch}: compiling ...", flush=True)
    jax_side, inputs = _jax_candidates(dim, size, args.batch, impls, rng)
    candidates = {}
    for impl, entry in jax_side.items():
      for name in ("fwd", "fwd_bwd"):
        compiled, fn_args = entry[name]["compiled"], entry[name]["args"]
        candidates[(impl, name)] = lambda c=compiled, a=fn_args: jax.block_until_ready(c(*a))
    torch_side = _torch_candidate(dim, inputs, torch_device) if torch_device else None
    if torch_side:
      for name in ("fwd", "fwd_bwd"):
        candidates[("torch", name)] = torch_side[name]
    times = common.interleaved_times(candidates, args.repeats)

    row = {"position": position, "channels": dim, "size": size, "batch": args.batch}
    for impl, entry in jax_side.items():
      for name in ("fwd", "fwd_bwd"):
        row[f"{impl}_{name}_s"] = times[(impl, name)]["best_s"]
        row[f"{impl}_{name}_median_s"] = times[(impl, name)]["median_s"]
        row[f"{impl}_{name}_compile_s"] = entry[name]["compile_s"]
        row[f"{impl}_{name}_peak_bytes"] = entry[name]["memory"]["peak_bytes"]
        row[f"{impl}_{name}_memory"] = entry[name]["memory"]
        row[f"{impl}_{name}_flops"] = entry[name]["flops"]
    if torch_side:
      for name in ("fwd", "fwd_bwd"):
        row[f"torch_{name}_s"] = times[("torch", name)]["best_s"]
        row[f"torch_{name}_median_s"] = times[("torch", name)]["median_s"]
        row[f"torch_{name}_peak_bytes"] = common.torch_peak_bytes(
          torch_side[name], torch_side["resident"], torch_side["device"]
        )
      for name in ("fwd", "fwd_bwd"):
        for impl in impls:
          row[f"{impl}_{name}_vs_torch"] = row[f"{impl}_{name}_s"] / row[f"torch_{name}_s"]
    for name in ("fwd", "fwd_bwd"):
      row[f"memory_{name}_shifted_vs_patches"] = (
        row[f"shifted_{name}_peak_bytes"] / row[f"patches_{name}_peak_bytes"]
      )

    branch = _dynamic_branch(dim, size, args.batch, impls, rng)
    branch_times = common.interleaved_times(
      {impl: b["run"] for impl, b in branch.items()}, args.repeats
    )
    for impl, b in branch.items():
      row[f"branch_{impl}_fwd_bwd_s"] = branch_times[impl]["best_s"]
      row[f"branch_{impl}_compile_s"] = b["compile_s"]
      row[f"branch_{impl}_peak_bytes"] = b["memory"]["peak_bytes"]
    row["branch_memory_shifted_vs_patches"] = (
      row["branch_shifted_peak_bytes"] / row["branch_patches_peak_bytes"]
    )

    speed_missed = torch_side and row["shifted_fwd_bwd_vs_torch"] > SPEED_TARGET
    memory_missed = row["memory_fwd_bwd_shifted_vs_patches"] > MEMORY_TARGET
    if args.profile or speed_missed or memory_missed:
      entry = jax_side["shifted"]["fwd_bwd"]
      profile = {
        "jax_shifted_fwd_bwd": common.xla_profile(
          lambda e=entry: jax.block_until_ready(e["compiled"](*e["args"])),
          entry["compiled"].as_text(),
          depth=2,
        )
      }
      if torch_side:
        profile["torch_fwd_bwd"] = common.torch_op_profile(torch_side["fwd_bwd"])
      profiles[position] = profile
    results.append(row)
    print(format_row_summary(row), flush=True)
  return {"results": results, "profiles": profiles}


def format_row_summary(row) -> str:
  parts = [
    f"  fwd+bwd s: patches {row['patches_fwd_bwd_s']:.3f}, shifted {row['shifted_fwd_bwd_s']:.3f}"
  ]
  if "torch_fwd_bwd_s" in row:
    parts.append(f"torch {row['torch_fwd_bwd_s']:.3f}")
  return ", ".join(parts)


COLUMNS_TIME = (
  ("position", "pos", "s"),
  ("channels", "C", "d"),
  ("size", "HW", "d"),
  ("batch", "B", "d"),
  ("torch_fwd_s", "torch fwd s", ".3f"),
  ("patches_fwd_s", "patches fwd s", ".3f"),
  ("shifted_fwd_s", "shifted fwd s", ".3f"),
  ("shifted_fwd_vs_torch", "x torch", ".2f"),
  ("torch_fwd_bwd_s", "torch f+b s", ".3f"),
  ("patches_fwd_bwd_s", "patches f+b s", ".3f"),
  ("shifted_fwd_bwd_s", "shifted f+b s", ".3f"),
  ("shifted_fwd_bwd_vs_torch", "x torch", ".2f"),
  ("patches_fwd_bwd_compile_s", "compile patches s", ".1f"),
  ("shifted_fwd_bwd_compile_s", "compile shifted s", ".1f"),
)
COLUMNS_MEMORY = (
  ("position", "pos", "s"),
  ("torch_fwd_mib", "torch fwd MiB", ".0f"),
  ("patches_fwd_mib", "patches fwd MiB", ".0f"),
  ("shifted_fwd_mib", "shifted fwd MiB", ".0f"),
  ("torch_fwd_bwd_mib", "torch f+b MiB", ".0f"),
  ("patches_fwd_bwd_mib", "patches f+b MiB", ".0f"),
  ("shifted_fwd_bwd_mib", "shifted f+b MiB", ".0f"),
  ("memory_fwd_bwd_shifted_vs_patches", "shifted/patches", ".2f"),
  ("branch_patches_fwd_bwd_s", "branch patches s", ".3f"),
  ("branch_shifted_fwd_bwd_s", "branch shifted s", ".3f"),
  ("branch_patches_mib", "branch patches MiB", ".0f"),
  ("branch_shifted_mib", "branch shifted MiB", ".0f"),
  ("branch_memory_shifted_vs_patches", "branch ratio", ".2f"),
)


def _with_mib(row):
  out = dict(row)
  for key in list(row):
    if key.endswith("_peak_bytes"):
      out[key.replace("_peak_bytes", "_mib")] = common.mib(row[key])
  return out


def check_targets(rows) -> list:
  lines = []
  for row in rows:
    if "shifted_fwd_bwd_vs_torch" in row:
      ratio = row["shifted_fwd_bwd_vs_torch"]
      lines.append(
        f"{row['position']}: shifted fwd+bwd {ratio:.2f}x torch (target <= "
        f"{SPEED_TARGET}) {'met' if ratio <= SPEED_TARGET else 'MISSED'}"
      )
    ratio = row["memory_fwd_bwd_shifted_vs_patches"]
    lines.append(
      f"{row['position']}: shifted peak memory {ratio:.2f}x patches (module fwd+bwd,"
      f" target <= {MEMORY_TARGET}) {'met' if ratio <= MEMORY_TARGET else 'MISSED'};"
      f" dynamic branch alone {row['branch_memory_shifted_vs_patches']:.2f}x"
    )
  return lines


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=2, help="batch size (16: the GPU setting)")
  parser.add_argument(
    "--repeats", type=int, default=3, help="timed runs per candidate; the best is kept"
  )
  common.add_common_arguments(parser)
  args = parser.parse_args(argv)

  threads = common.configure_threads(args.threads)
  import jax

  machine = common.machine_info(threads)
  print(
    f"SGDC on {jax.default_backend()} ({machine['processor']}), {threads} threads for XLA "
    f"and torch, batch {args.batch}, best of {args.repeats}",
    flush=True,
  )
  out = run(args)
  rows = [_with_mib(r) for r in out["results"]]
  print("\nTime (seconds per call; 'x torch' = shifted / PyTorch reference)")
  print(common.format_table(rows, COLUMNS_TIME))
  print("\nPeak memory (MiB) of the module, and of the dynamic branch alone (forward+backward)")
  print(common.format_table(rows, COLUMNS_MEMORY))
  for position, profile in out["profiles"].items():
    print()
    print(
      common.format_profile(profile["jax_shifted_fwd_bwd"], f"[{position}] JAX shifted fwd+bwd")
    )
    if "torch_fwd_bwd" in profile:
      print(common.format_torch_profile(profile["torch_fwd_bwd"], f"[{position}] PyTorch fwd+bwd"))
  print("\nTargets:")
  for line in check_targets(out["results"]):
    print("  " + line)
  for row in out["results"]:
    for key in [k for k in row if k.endswith("_memory")]:
      row[key] = dict(row[key])
  machine["load_average_at_end"] = os.getloadavg()  # with the start: how busy the machine was
  payload = {"machine": machine, "batch": args.batch, "repeats": args.repeats, **out}
  path = common.write_json("sgdc", payload, args.output)
  print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
