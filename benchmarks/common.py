"""Helpers shared by the model benchmarks: threads, timing, peak memory, XLA profiles, JSON.

Conventions (as in benchmarks/metrics.py): run from the repository root, print a table, write
benchmarks/results/<name>.json (git-ignored).

* Threads. `configure_threads(n)` pins the process to n CPU cores before JAX starts: XLA:CPU
  sizes its thread pools from the affinity mask, and torch gets `torch.set_num_threads(n)`, so
  both frameworks use the same n threads.
* Time. `interleaved_times` runs the candidates round-robin and keeps the best of the repeats:
  on a shared machine the minimum is the least disturbed measurement, and interleaving exposes
  every candidate to the same background load.
* Memory. JAX: `compiled.memory_analysis()` of the very executable that is timed, peak =
  arguments + outputs + temporaries - aliased (donated) bytes; XLA assigns every buffer
  statically, so this is the program's true peak on any backend. On a GPU the allocator's
  `peak_bytes_in_use` is reported too. PyTorch on CPU: the profiler's allocation events
  (`profile_memory=True`), summed in time order, give the peak of the bytes allocated during
  the call; the tensors alive before it (inputs, parameters, gradients, optimiser state) are
  added, which is what the JAX arguments count. On CUDA, `torch.cuda.max_memory_allocated`.
* Profile. `xla_profile` traces calls with `jax.profiler`, takes the run time of every XLA thunk
  (one per fusion, dot, convolution...; best of three calls) and attributes it, through the HLO
  metadata, to the Flax module scope and to the forward or backward pass.
"""

import collections
import glob
import json
import os
import pathlib
import platform
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"


def configure_threads(threads: int | None) -> int:
  """Restricts this process to `threads` cores (default: all it may use); returns the count.

  Must run before the first JAX computation (XLA reads the affinity mask when its CPU client
  starts); torch, if installed, is set to the same number of intra-op threads.
  """
  available = sorted(os.sched_getaffinity(0))
  threads = threads or len(available)
  if not 1 <= threads <= len(available):
    raise ValueError(f"--threads must be between 1 and {len(available)}, got {threads}")
  os.sched_setaffinity(0, available[:threads])
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return threads
  torch.set_num_threads(threads)
  torch.set_num_interop_threads(1)
  return threads


def add_common_arguments(parser) -> None:
  """The options every model benchmark takes: threads, the PyTorch switch, profile, output."""
  parser.add_argument(
    "--threads", type=int, default=None, help="CPU threads for XLA and torch (default: all)"
  )
  parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
  parser.add_argument(
    "--profile", action="store_true", help="print the profile even when targets are met"
  )
  parser.add_argument("--output", type=pathlib.Path, default=None)


def machine_info(threads: int) -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top

  info = {
    "platform": platform.platform(),
    "processor": _cpu_model(),
    "python": platform.python_version(),
    "jax": jax.__version__,
    "jax_backend": jax.default_backend(),
    "devices": [str(d) for d in jax.devices()],
    "threads": threads,
    "load_average_at_start": os.getloadavg(),
  }
  try:
    import torch  # pylint: disable=g-import-not-at-top

    info["torch"] = torch.__version__
    info["torch_threads"] = torch.get_num_threads()
    info["cuda"] = torch.cuda.is_available()
  except ImportError:
    pass
  return info


def _cpu_model() -> str:
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


def interleaved_times(
  candidates: Mapping[str, Callable[[], Any]], repeats: int, warmup: int = 1
) -> dict[str, dict[str, float]]:
  """Seconds per call of each candidate: best and median of `repeats` round-robin runs.

  Each candidate must block until its work is done (block_until_ready / a host value).
  """
  for fn in candidates.values():
    for _ in range(warmup):
      fn()
  runs: dict[str, list[float]] = {name: [] for name in candidates}
  for _ in range(repeats):
    for name, fn in candidates.items():
      start = time.perf_counter()
      fn()
      runs[name].append(time.perf_counter() - start)
  return {
    name: {"best_s": min(r), "median_s": statistics.median(r), "runs": len(r)}
    for name, r in runs.items()
  }


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
  start = time.perf_counter()
  result = fn()
  return time.perf_counter() - start, result


def jax_memory(compiled) -> dict[str, int]:
  """Static buffer sizes of a compiled JAX executable and its peak (see the module docstring)."""
  analysis = compiled.memory_analysis()
  sizes = {
    "argument_bytes": analysis.argument_size_in_bytes,
    "output_bytes": analysis.output_size_in_bytes,
    "temp_bytes": analysis.temp_size_in_bytes,
    "alias_bytes": analysis.alias_size_in_bytes,
  }
  sizes["peak_bytes"] = (
    sizes["argument_bytes"] + sizes["output_bytes"] + sizes["temp_bytes"] - sizes["alias_bytes"]
  )
  return sizes


def jax_device_peak_bytes() -> int | None:
  """The allocator's peak on an accelerator (None on CPU, where XLA reports no stats)."""
  import jax  # pylint: disable=g-import-not-at-top

  stats = jax.devices()[0].memory_stats()
  return None if not stats else stats.get("peak_bytes_in_use")


def jax_flops(compiled) -> float | None:
  """FLOPs of the executable per XLA's cost analysis (a loop body is counted once)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  return None if not analysis or "flops" not in analysis else float(analysis["flops"])


def tensor_bytes(tensors: Iterable[Any]) -> int:
  return int(sum(t.numel() * t.element_size() for t in tensors if t is not None))


def torch_peak_bytes(fn: Callable[[], Any], resident_bytes: int, device: str = "cpu") -> int:
  """Peak memory of one call of `fn`: bytes alive before it (given) + peak bytes it allocates."""
  import torch  # pylint: disable=g-import-not-at-top

  if device.startswith("cuda"):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated())
  with torch.profiler.profile(
    activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
  ) as prof:
    fn()
  events = sorted(
    (e.start_ns(), e.nbytes())
    for e in prof.profiler.kineto_results.events()
    if e.name() == "[memory]"
  )
  live = peak = 0
  for _, nbytes in events:
    live += nbytes
    peak = max(peak, live)
  return resident_bytes + peak


def torch_op_profile(fn: Callable[[], Any], top: int = 8) -> list[dict[str, Any]]:
  """The `top` aten ops of one call of `fn` by self CPU time."""
  import torch  # pylint: disable=g-import-not-at-top

  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    fn()
  averages = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
  total = sum(e.self_cpu_time_total for e in averages) or 1.0
  return [
    {
      "op": e.key,
      "ms": e.self_cpu_time_total / 1e3,
      "calls": e.count,
      "share": e.self_cpu_time_total / total,
    }
    for e in averages[:top]
  ]


# --- XLA profiles -----------------------------------------------------------------------------

_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+) = ")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_WRAPPER = re.compile(r"\b[\w.<>-]+\(([^()]*)\)")
_CALLS = re.compile(r"calls=%([\w.\-]+)")
_OPERAND = re.compile(r"%([\w.\-]+)")
_CONTAINERS = ("while", "conditional", "call")


def _opcode(line: str, start: int) -> str:
  """The opcode after `name = <type> `, skipping a parenthesised tuple type."""
  i = start
  if line[i] == "(":
    depth = 0
    while i < len(line):
      depth += {"(": 1, ")": -1}.get(line[i], 0)
      i += 1
      if depth == 0:
        break
  else:
    i = line.index(" ", i)
  match = re.match(r"\s*([\w-]+)\(", line[i:])
  return match.group(1) if match else ""


def hlo_instruction_metadata(hlo_text: str) -> dict[str, tuple[str, str]]:
  """instruction name -> (opcode, op_name metadata) for every instruction of an HLO module.

  Instructions that XLA created without metadata (e.g. the convolution computing a weight
  gradient) take that of their fused computation's root or a consumer, else of an operand,
  preferring a model backward op, then a model op (the optimiser also consumes gradients).
  """
  table, calls, operands, roots = {}, {}, {}, {}
  computation = None
  for line in hlo_text.splitlines():
    if line.startswith("%") or line.startswith("ENTRY"):
      computation = line.split()[1 if line.startswith("ENTRY") else 0].lstrip("%")
      continue
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    name = match.group(1)
    op_name = _OP_NAME.search(line)
    table[name] = (_opcode(line, match.end()), op_name.group(1) if op_name else "")
    called = _CALLS.search(line)
    if called:
      calls[name] = called.group(1)
    operands[name] = _OPERAND.findall(line[match.end() :].split("), ")[0])
    if line.lstrip().startswith("ROOT") and computation:
      roots[computation] = name
  consumers = collections.defaultdict(list)
  for name, names in operands.items():
    for operand in names:
      consumers[operand].append(name)

  def model_first(op_names):  # a layer's backward ("transpose(jvp(") names it best
    for test in (lambda o: "transpose(jvp(" in o, lambda o: "jvp(" in o, bool):
      found = next((o for o in op_names if test(o)), "")
      if found:
        return found
    return ""

  sources = (
    lambda name: [roots.get(calls.get(name, ""), "")] + consumers[name],
    lambda name: operands.get(name, []),
  )
  for source in sources:  # consumers first: a weight gradient's consumer names the layer
    for _ in range(4):  # a few hops suffice
      for name, (opcode, op_name) in table.items():
        if not op_name:
          table[name] = (opcode, model_first([table[c][1] for c in source(name) if c in table]))
  return table


def scope_of(op_name: str) -> tuple[str, list[str]]:
  """('backward' | 'forward', module path) of an op_name like jit(f)/transpose(jvp(M))/a/b/op."""
  direction = "backward" if "transpose(" in op_name else "forward"
  path = op_name
  while _WRAPPER.search(path):  # jit(f) -> f, transpose(jvp(M)) -> M
    path = _WRAPPER.sub(r"\1", path)
  return direction, [p for p in path.split("/") if p][1:-1]  # drop the jitted function and the op


def xla_profile(
  fn: Callable[[], Any],
  hlo_text: str,
  depth: int = 3,
  top: int = 12,
  scope_fn: Callable[[list[str]], str] | None = None,
  runs: int = 3,
) -> dict[str, Any]:
  """Thunk time of a call of `fn` by module scope and direction, and by HLO opcode.

  `fn` must run the executable whose optimised HLO text is `hlo_text` and block until done.
  A thunk's scope is `scope_fn(module path)`, by default the path's first `depth` names. Each
  thunk's time is its minimum over `runs` traced calls (the machine may be shared). Thunks
  that ran concurrently add up, so shares are of the summed thunk time, not of wall time.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from jax._src.lib import _profile_data  # pylint: disable=g-import-not-at-top

  table = hlo_instruction_metadata(hlo_text)
  scope_fn = scope_fn or (lambda parts: "/".join(parts[:depth]) or "(top level)")
  best: dict[str, float] = {}
  for _ in range(runs):
    per_thunk: dict[str, float] = collections.defaultdict(float)
    with tempfile.TemporaryDirectory() as trace_dir:
      jax.profiler.start_trace(trace_dir)
      try:
        fn()
      finally:
        jax.profiler.stop_trace()
      paths = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
      if not paths:
        return {"by_scope": [], "by_opcode": [], "total_ms": 0.0}
      data = _profile_data.ProfileData.from_file(paths[0])
    for plane in data.planes:
      for line in plane.lines:
        for event in line.events:
          name = dict(event.stats).get("hlo_op")
          if name in table and table[name][0] not in _CONTAINERS:  # bodies count themselves
            per_thunk[name] += event.duration_ns / 1e9
    best = (
      dict(per_thunk)
      if not best
      else {name: min(seconds, per_thunk.get(name, seconds)) for name, seconds in best.items()}
    )
  by_scope: dict[tuple[str, str], float] = collections.defaultdict(float)
  by_opcode: dict[str, float] = collections.defaultdict(float)
  for name, seconds in best.items():
    opcode, op_name = table[name]
    direction, parts = scope_of(op_name)
    by_scope[(direction, scope_fn(parts))] += seconds
    by_opcode["ynn-fusion" if name.startswith("ynn_fusion") else opcode] += seconds
  total = sum(by_scope.values()) or 1.0
  scopes = sorted(by_scope.items(), key=lambda kv: -kv[1])[:top]
  opcodes = sorted(by_opcode.items(), key=lambda kv: -kv[1])[:top]
  return {
    "total_ms": 1e3 * sum(by_scope.values()),
    "by_scope": [
      {"scope": s, "pass": d, "ms": 1e3 * t, "share": t / total} for (d, s), t in scopes
    ],
    "by_opcode": [{"opcode": o, "ms": 1e3 * t, "share": t / total} for o, t in opcodes],
  }


def format_profile(profile: Mapping[str, Any], title: str) -> str:
  lines = [f"{title}: XLA thunk time {profile['total_ms']:.0f} ms"]
  for row in profile["by_scope"]:
    lines.append(
      f"  {row['ms']:8.1f} ms {100 * row['share']:5.1f}%  {row['pass']:<8} {row['scope']}"
    )
  lines.append(
    "  by HLO op: "
    + ", ".join(f"{r['opcode']} {100 * r['share']:.0f}%" for r in profile["by_opcode"])
  )
  return "\n".join(lines)


def format_torch_profile(rows: Sequence[Mapping[str, Any]], title: str) -> str:
  lines = [f"{title}: top aten ops by self CPU time"]
  for row in rows:
    lines.append(f"  {row['ms']:8.1f} ms {100 * row['share']:5.1f}%  {row['op']} x{row['calls']}")
  return "\n".join(lines)


# --- output -----------------------------------------------------------------------------------


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
  """Fixed-width table; columns are (key, header, format spec); missing values print '-'."""

  def cell(row, key, spec):
    value = row.get(key)
    return "-" if value is None else format(value, spec)

  widths = [max(len(header), *(len(cell(r, k, s)) for r in rows)) for k, header, s in columns]
  header = "  ".join(h.rjust(w) for (_, h, _), w in zip(columns, widths))
  body = ["  ".join(cell(r, k, s).rjust(w) for (k, _, s), w in zip(columns, widths)) for r in rows]
  return "\n".join([header, "-" * len(header)] + body)


def write_json(
  name: str, payload: Mapping[str, Any], output: pathlib.Path | None = None
) -> pathlib.Path:
  path = output or RESULTS_DIR / f"{name}.json"
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
  return path


def mib(nbytes: float | None) -> float | None:
  return None if nbytes is None else nbytes / 2**20
