"""The launchers end to end against stub cluster tools: `launch/slurm_gpu.sbatch` under a stub
`srun` that starts a 2-task step, `launch/tpu_pod.sh` under a stub `gcloud` acting as one worker,
and the GKE JobSet's command."""

import json
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tests import ports, train_helpers

LAUNCH = train_helpers.REPO / "launch"
# An override whose value has spaces and both kinds of quotes: it must reach `train` unchanged.
QUOTED_OVERRIDE = '--config.data.dir=/data/my isic\'s "v2"'

_STUB_SRUN = """#!{python}
\"\"\"Stub srun: records its arguments, then runs the command as the SLURM_NTASKS tasks of a
one-node step, with the variables srun sets; --kill-on-bad-exit: a failing task ends the step.\"\"\"
import json, os, subprocess, sys, time

args = sys.argv[1:]
with open(os.environ["STUB_SRUN_CALLS"], "a") as f:
  f.write(json.dumps(args) + "\\n")
command = args[next(i for i, arg in enumerate(args) if not arg.startswith("-")):]
ntasks = int(os.environ["SLURM_NTASKS"])
tasks = []
for rank in range(ntasks):
  env = dict(
    os.environ,
    SLURM_STEP_ID="0",
    SLURM_PROCID=str(rank),
    SLURM_LOCALID=str(rank),
    SLURM_NODEID="0",
    SLURM_STEP_NODELIST=os.environ["SLURM_NODELIST"],
    SLURM_STEP_NUM_NODES="1",
    SLURM_STEP_NUM_TASKS=str(ntasks),
    SLURM_STEP_TASKS_PER_NODE=str(ntasks),
  )
  log = open(os.path.join(os.environ["STUB_SRUN_LOGS"], f"task_{{rank}}.log"), "w")
  tasks.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
while any(task.poll() is None for task in tasks):
  if any(task.returncode for task in tasks):
    for task in tasks:
      task.kill()
  time.sleep(0.2)
sys.exit(max(task.returncode for task in tasks))
"""


@pytest.fixture
def slurm_job_id():
  """A job id whose JAX coordinator port (id % 4096 + 61440) stays reserved for the test."""
  with ports.reserved_port_in(range(61440, 65536)) as port:
    yield 4096 + port - 61440


@pytest.mark.slow
def test_slurm_sbatch_trains_two_tasks_through_jax_slurm_detection(tmp_path, slurm_job_id):
  bin_dir, logs = tmp_path / "bin", tmp_path / "task_logs"
  bin_dir.mkdir()
  logs.mkdir()
  srun = bin_dir / "srun"
  srun.write_text(_STUB_SRUN.format(python=sys.executable))
  srun.chmod(0o755)
  # Spaces and quotes in a path must survive sbatch, slurm_task.sh and srun.
  data_dir = train_helpers.tiny_dataset(tmp_path / 'my isic\'s "v2"')
  workdir = tmp_path / "run"
  # What sbatch gives the batch script of a 1-node, 2-task job: the allocation, no step yet.
  env = train_helpers.subprocess_env(
    PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    PYTHON=sys.executable,
    STUB_SRUN_CALLS=str(tmp_path / "srun_calls.jsonl"),
    STUB_SRUN_LOGS=str(logs),
    SLURM_JOB_ID=str(slurm_job_id),
    SLURM_JOB_NAME="sgdnet_jax",
    SLURM_NODELIST="localhost",
    SLURM_JOB_NODELIST="localhost",
    SLURM_JOB_NUM_NODES="1",
    SLURM_NNODES="1",
    SLURM_NTASKS="2",
    SLURM_NPROCS="2",
    SLURM_NTASKS_PER_NODE="2",
    SLURM_CPUS_PER_TASK="1",
    SLURM_SUBMIT_DIR=str(train_helpers.REPO),
    XLA_FLAGS="--xla_force_host_platform_device_count=1",
  )
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    env.pop(name, None)
  train_args = train_helpers.train_command(
    workdir, data_dir, total_steps=2, eval_every_epochs=0, checkpoint_every_steps=1
  )[4:]
  # Its own session, so that a timeout ends the tasks too. 900 s as
  # tests/test_train_multiprocess.py:
  # a cold compilation cache on a loaded 2-core machine takes minutes.
  job = subprocess.Popen(
    ["bash", str(LAUNCH / "slurm_gpu.sbatch"), *train_args],
    cwd=train_helpers.REPO,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    start_new_session=True,
  )
  try:
    output = job.communicate(timeout=900)[0]
  finally:
    if job.poll() is None:
      os.killpg(job.pid, signal.SIGKILL)
  task_logs = [(logs / f"task_{rank}.log").read_text() for rank in range(2)]
  assert job.returncode == 0, (output, task_logs[0][-3000:], task_logs[1][-3000:])
  assert "slurm: job" in output and "2 tasks on 1 nodes (localhost): train" in output
  [srun_args] = [
    json.loads(line) for line in (tmp_path / "srun_calls.jsonl").read_text().splitlines()
  ]
  assert srun_args == [
    "--kill-on-bad-exit=1",
    "--cpus-per-task=1",
    sys.executable,
    "-m",
    "sgdnet_jax.main",
    "train",
    "--config.distributed=auto",
    *train_args,
  ]
  # Each task initialised through JAX's SLURM detection and saw both processes' devices.
  assert (
    "jax: process 0 of 2 (slurm), local devices 1 [cpu:0], global devices 2 (cpu)" in (task_logs[0])
  ), task_logs[0][-3000:]
  assert "jax: process 1 of 2 (slurm)" in task_logs[1], task_logs[1][-3000:]
  assert sorted(train_helpers.step_losses(workdir)) == [1, 2]
  assert (workdir / "checkpoints" / "2").is_dir()
  assert json.loads((workdir / "config.json").read_text())["data"]["dir"] == data_dir


_FAKE_REMOTE_PYTHON = """#!/usr/bin/env bash
# `python3 -m venv .venv` on a fake worker: a pip that records its arguments and a python that
# records its own, prints a start line and runs until stopped.
set -eu
[[ "$1" != -c ]] || exit 0  # the version check: 3.11 or newer
venv=$3
mkdir -p "$venv/bin"
printf '#!/usr/bin/env bash\\nprintf "%%s\\\\n" "$*" >>pip_calls.txt\\n' >"$venv/bin/pip"
cat >"$venv/bin/python" <<'PY'
#!/usr/bin/env bash
{python} -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@" >python_argv.json
echo "jax: process 0 of 1 (stub)"
exec sleep 60
PY
chmod +x "$venv/bin/pip" "$venv/bin/python"
"""

_STUB_GCLOUD = """#!{python}
\"\"\"Stub gcloud: records its arguments; `tpu-vm scp` copies into a fake worker's home and
`tpu-vm ssh --command=...` runs the command there through bash, as the remote shell would.\"\"\"
import json, os, shutil, subprocess, sys

args = sys.argv[1:]
with open(os.environ["STUB_GCLOUD_CALLS"], "a") as f:
  f.write(json.dumps(args) + "\\n")
home = os.environ["STUB_WORKER_HOME"]
if args[:4] == ["compute", "tpus", "tpu-vm", "scp"]:
  shutil.copy(args[4], os.path.join(home, args[5].split(":", 1)[1]))
elif args[:4] == ["compute", "tpus", "tpu-vm", "ssh"]:
  command = next(arg for arg in args if arg.startswith("--command="))[len("--command="):]
  sys.exit(subprocess.run(["bash", "-c", command], cwd=home).returncode)
"""


class _TpuPod:
  """`launch/tpu_pod.sh` with a stub gcloud whose one worker lives in a temporary folder."""

  def __init__(self, root: pathlib.Path):
    self.root = root
    self.home = root / "worker_home"
    self.calls = root / "gcloud_calls.jsonl"
    bin_dir = root / "bin"
    for folder in (self.home, bin_dir, root / "tmp"):
      folder.mkdir()
    for name, text in (("gcloud", _STUB_GCLOUD), ("remote_python3", _FAKE_REMOTE_PYTHON)):
      (bin_dir / name).write_text(text.format(python=sys.executable))
      (bin_dir / name).chmod(0o755)
    self.env = dict(
      os.environ,
      PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
      STUB_GCLOUD_CALLS=str(self.calls),
      STUB_WORKER_HOME=str(self.home),
      REMOTE_PYTHON=str(bin_dir / "remote_python3"),
      GCLOUD_FLAGS="--project=my-project --tunnel-through-iap",
      TMPDIR=str(root / "tmp"),
    )

  def __call__(self, *args: str, dry_run: bool = False) -> tuple[list, str]:
    """Runs a subcommand; returns the gcloud calls it made (or printed) and its output."""
    self.calls.write_text("")
    command = ["bash", str(LAUNCH / "tpu_pod.sh"), *(["--dry-run"] if dry_run else []), *args]
    result = subprocess.run(
      command, cwd=train_helpers.REPO, env=self.env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    if dry_run:
      lines = [shlex.split(line) for line in result.stdout.splitlines()]
      return [line[1:] for line in lines if line[0] == "gcloud"], result.stdout
    return [json.loads(line) for line in self.calls.read_text().splitlines()], result.stdout


def _ssh(worker: str, command: str) -> list:
  return [
    "compute",
    "tpus",
    "tpu-vm",
    "ssh",
    "my-tpu",
    "--zone=us-central2-b",
    f"--worker={worker}",
    "--project=my-project",
    "--tunnel-through-iap",
    f"--command={command}",
  ]


def _wait_for(path: pathlib.Path, timeout_s: float = 20.0):
  deadline = time.monotonic() + timeout_s
  while not path.exists() or not path.read_text().strip():
    assert time.monotonic() < deadline, f"{path} did not appear"
    time.sleep(0.05)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  return (
    subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True)
    .stdout.strip()
    .startswith(("S", "R"))
  )


def test_tpu_pod_subcommands_run_the_expected_gcloud_commands(tmp_path):
  pod = _TpuPod(tmp_path)
  site = ["my-tpu", "us-central2-b"]
  remote_python = pod.env["REMOTE_PYTHON"]

  calls, _ = pod("setup", *site)
  archive = str(tmp_path / "tmp" / "sgdnet_jax-my-tpu.tar.gz")
  requirements = train_helpers.REPO.joinpath("requirements.txt").read_text()
  jax_version = requirements.split("\njax==")[1].split()[0]
  assert calls == [
    [
      "compute",
      "tpus",
      "tpu-vm",
      "scp",
      archive,
      "my-tpu:sgdnet_jax.tar.gz",
      "--zone=us-central2-b",
      "--worker=all",
      "--project=my-project",
      "--tunnel-through-iap",
    ],
    _ssh(
      "all",
      "mkdir -p sgdnet_jax && tar -xzf sgdnet_jax.tar.gz -C sgdnet_jax && rm sgdnet_jax.tar.gz "
      f"&& cd sgdnet_jax && python={remote_python} "
      "&& if ! $python -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then "
      "sudo add-apt-repository -y ppa:deadsnakes/ppa && sudo apt-get install -y python3.11-venv "
      "&& python=python3.11; fi && $python -m venv .venv "
      "&& .venv/bin/pip install --quiet --upgrade pip "
      f"&& .venv/bin/pip install --quiet -r requirements.txt jax\\[tpu\\]=={jax_version}",
    ),
  ]
  assert pod("setup", *site, dry_run=True)[0] == calls
  worker_repo = pod.home / "sgdnet_jax"
  assert (worker_repo / "sgdnet_jax" / "core" / "distributed.py").is_file()
  assert (worker_repo / "launch" / "tpu_pod.sh").is_file()
  assert not (worker_repo / ".venv" / "lib").exists()  # The local venv stays home.
  assert not os.path.exists(archive) and not (pod.home / "sgdnet_jax.tar.gz").exists()
  pip_calls = (worker_repo / "pip_calls.txt").read_text().splitlines()
  assert pip_calls[-1] == f"install --quiet -r requirements.txt jax[tpu]=={jax_version}"

  train_args = ["--config", "configs/isic2018.py:fold=1", "--workdir", "gs://b/r", QUOTED_OVERRIDE]
  printed_calls, _ = pod("run", *site, *train_args, dry_run=True)
  calls, _ = pod("run", *site, *train_args)
  assert calls == printed_calls
  log = "logs/train.$(hostname)"
  assert calls == [
    _ssh(
      "all",
      f"cd sgdnet_jax && mkdir -p logs && {{ SGDNET_JAX_PLATFORM=tpu nohup launch/tpu_worker.sh "
      f"{log}.status "
      "--config.distributed=on --config configs/isic2018.py:fold=1 --workdir gs://b/r "
      '--config.data.dir=/data/my\\ isic\\\'s\\ \\"v2\\" '
      f">>{log}.log 2>&1 </dev/null & echo $! >{log}.pid; }}",
    )
  ]
  _wait_for(worker_repo / "python_argv.json")
  argv = json.loads((worker_repo / "python_argv.json").read_text())
  assert argv == ["-m", "sgdnet_jax.main", "train", "--config.distributed=on", *train_args]
  pid = int(next((worker_repo / "logs").glob("train.*.pid")).read_text())
  try:
    assert _alive(pid)  # Detached: the ssh command returned, the run goes on.
    calls, output = pod("logs", *site)
    assert calls == [_ssh("0", f"cd sgdnet_jax && tail -n 50 {log}.log")]
    assert "jax: process 0 of 1 (stub)" in output
    assert pod("logs", *site, "all", dry_run=True)[0] == [
      _ssh("all", f"cd sgdnet_jax && tail -n 50 {log}.log")
    ]

    assert pod("stop", *site, dry_run=True)[0] == [
      _ssh("all", f"cd sgdnet_jax && kill -TERM $(cat {log}.pid)")
    ]
    pod("stop", *site)
    deadline = time.monotonic() + 10
    while _alive(pid):
      assert time.monotonic() < deadline, "stop left the run going"
      time.sleep(0.05)
    _wait_for(next((worker_repo / "logs").glob("train.*.status")))  # how the run ended
  finally:
    if _alive(pid):
      os.kill(pid, signal.SIGKILL)


def test_every_launcher_passes_bash_n():
  launchers = sorted(p for p in LAUNCH.iterdir() if p.suffix in (".sh", ".sbatch"))
  assert {p.name for p in launchers} >= {
    "local_multiprocess.sh",
    "slurm_gpu.sbatch",
    "slurm_task.sh",
    "tpu_pod.sh",
  }
  for launcher in launchers:
    result = subprocess.run(["bash", "-n", str(launcher)], capture_output=True, text=True)
    assert result.returncode == 0, (launcher, result.stderr)


def test_gke_jobset_runs_the_documented_train_command_on_every_host():
  jobset = yaml.safe_load((LAUNCH / "gke_jobset.yaml").read_text())
  assert jobset["kind"] == "JobSet"
  [replicated] = jobset["spec"]["replicatedJobs"]
  job = replicated["template"]["spec"]
  pod = job["template"]["spec"]
  [container] = pod["containers"]
  command = container["command"]
  assert command[:4] == ["python", "-m", "sgdnet_jax.main", "train"]
  assert command[-1] == "--config.distributed=on"
  assert container["env"] == [{"name": "SGDNET_JAX_PLATFORM", "value": "tpu"}]
  # One pod per TPU host: as many as the Job runs at once, each with the host's chips.
  assert job["parallelism"] == job["completions"]
  assert int(container["resources"]["limits"]["google.com/tpu"]) > 0
  docs = (train_helpers.REPO / "docs" / "launch.md").read_text()
  assert shlex.join(command) in docs
  # The arguments are the train command's: its config loads with the overrides.
  from sgdnet_jax.core import config_utils

  spec = command[command.index("--config") + 1]
  overrides = [arg for arg in command[4:] if arg.startswith("--config.")]
  config = config_utils.load_config(str(train_helpers.REPO / spec), overrides)
  assert config.distributed == "on" and config.data.dir == "/data/isic2018"


# Each launcher with a line it accepts; the flags of the launcher itself are --dry-run and --help.
_LAUNCHER_LINES = {
  "tpu_pod.sh": ["run", "my-tpu", "us-central2-b", "--config", "configs/test.py", "--workdir", "w"],
  "slurm_task.sh": ["train", "--config", "configs/test.py", "--workdir", "w"],
  "slurm_gpu.sbatch": ["--config", "configs/test.py", "--workdir", "w"],
  "local_multiprocess.sh": ["2", "--config", "configs/test.py", "--workdir", "w"],
}
_CLUSTER_TOOLS = ("gcloud", "srun", "sbatch", "salloc", "kubectl")


def _run_without_cluster(tmp_path: pathlib.Path, script: str, args: list[str], **extra_env: str):
  """Runs a launcher outside any cluster with stub cluster tools; returns it and the stub calls."""
  bin_dir, calls = tmp_path / "bin", tmp_path / "cluster_calls.txt"
  bin_dir.mkdir(exist_ok=True)
  for tool in _CLUSTER_TOOLS:
    stub = bin_dir / tool
    stub.write_text(f'#!/usr/bin/env bash\necho "{tool} $*" >>{shlex.quote(str(calls))}\nexit 1\n')
    stub.chmod(0o755)
  env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
  env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
  env.update(extra_env)
  result = subprocess.run(
    ["bash", str(LAUNCH / script), *args],
    cwd=train_helpers.REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=60,
  )
  return result, calls.read_text().splitlines() if calls.exists() else []


@pytest.mark.parametrize("position", range(8))
def test_tpu_pod_dry_run_in_any_position_calls_no_gcloud(tmp_path, position):
  line = _LAUNCHER_LINES["tpu_pod.sh"]
  result, calls = _run_without_cluster(
    tmp_path, "tpu_pod.sh", [*line[:position], "--dry-run", *line[position:]]
  )
  assert result.returncode == 0, result.stderr
  assert calls == []
  [printed] = [shlex.split(text) for text in result.stdout.splitlines()]
  assert printed[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu"]
  assert "--config configs/test.py --workdir w" in printed[-1]
  assert "--dry-run" not in printed[-1]


@pytest.mark.parametrize("script", ["slurm_task.sh", "slurm_gpu.sbatch"])
def test_slurm_dry_run_anywhere_prints_the_srun_step_and_calls_nothing(tmp_path, script):
  line = _LAUNCHER_LINES[script]
  for position in (0, len(line) // 2, len(line)):
    result, calls = _run_without_cluster(
      tmp_path, script, [*line[:position], "--dry-run", *line[position:]]
    )
    assert result.returncode == 0, result.stderr
    assert calls == []
    printed = shlex.split(result.stdout)
    assert printed[:2] == ["srun", "--kill-on-bad-exit=1"]
    train = printed.index("train")
    assert printed[train + 1 :] == ["--config.distributed=auto", *line[-4:]]


@pytest.mark.parametrize("script", sorted(_LAUNCHER_LINES))
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_anywhere_prints_the_usage_and_exits_0(tmp_path, script, flag):
  line = _LAUNCHER_LINES[script]
  header = (LAUNCH / script).read_text().splitlines()[1].lstrip("# ")
  for position in (0, 1, len(line)):
    result, calls = _run_without_cluster(
      tmp_path, script, [*line[:position], flag, *line[position:]]
    )
    assert (result.returncode, result.stderr, calls) == (0, "", [])
    assert result.stdout.startswith(header + "\n")
    assert f"launch/{script}" in result.stdout  # the usage line
    assert "#" not in result.stdout.split("\n", 1)[0]


@pytest.mark.parametrize(
  "script, args",
  [
    ("tpu_pod.sh", ["--dryrun", "run", "my-tpu", "us-central2-b", "--config", "c"]),
    ("tpu_pod.sh", ["run", "--zone=us-central2-b", "my-tpu", "us-central2-b"]),
    ("tpu_pod.sh", ["setup", "my-tpu", "us-central2-b", "--project=p"]),
    ("tpu_pod.sh", ["logs", "my-tpu", "us-central2-b", "--worker=1"]),
    ("tpu_pod.sh", ["stop", "my-tpu", "us-central2-b", "-f"]),
    ("tpu_pod.sh", ["run", "my-tpu"]),
    ("slurm_task.sh", ["--nodes=2", "train", "--config", "c", "--workdir", "w"]),
    ("local_multiprocess.sh", ["--config", "c", "--workdir", "w"]),
  ],
)
def test_unknown_launcher_flags_exit_2_before_any_cluster_call(tmp_path, script, args):
  result, calls = _run_without_cluster(tmp_path, script, args)
  assert (result.returncode, result.stdout, calls) == (2, "", [])
  [message] = result.stderr.splitlines()
  assert message.startswith("error: ") and "usage: launch/" in message


def test_a_slurm_job_with_gpus_on_a_cpu_jaxlib_stops_in_one_line_before_srun(tmp_path):
  # What sbatch gives a job with 2 GPUs; JAX in PYTHON runs on the CPU (this test venv's jaxlib).
  gpu_job = dict(SLURM_JOB_ID="7", SLURM_JOB_GPUS="0,1", SLURM_GPUS_ON_NODE="2")
  result, calls = _run_without_cluster(
    tmp_path,
    "slurm_gpu.sbatch",
    _LAUNCHER_LINES["slurm_gpu.sbatch"],
    PYTHON=sys.executable,
    JAX_PLATFORMS="cpu",
    **gpu_job,
  )
  assert (result.returncode, result.stdout, calls) == (2, "", [])
  [message] = result.stderr.splitlines()
  assert message.startswith("error: JAX's backend is cpu, not gpu (cuda), in ")
  assert "requirements-cuda.txt" in message


@pytest.mark.parametrize("status, requeued", [(75, True), (0, False), (1, False)])
def test_slurm_job_requeues_itself_only_when_train_asks_to_resume(tmp_path, status, requeued):
  """Stub srun exits as train did; stub scontrol records. 75 (stopped with a checkpoint) requeues
  the job by its id; a finished (0) or failed (1) run does not. The job's status is train's."""
  bin_dir, calls = tmp_path / "bin", tmp_path / "calls.txt"
  bin_dir.mkdir()
  for tool, exit_status in (("srun", status), ("scontrol", 0), ("sbatch", 1)):
    stub = bin_dir / tool
    stub.write_text(f'#!/usr/bin/env bash\necho "{tool} $*" >>{calls}\nexit {exit_status}\n')
    stub.chmod(0o755)
  env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
  env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", SLURM_JOB_ID="4242", PYTHON="python")
  result = subprocess.run(
    ["bash", str(LAUNCH / "slurm_gpu.sbatch"), *_LAUNCHER_LINES["slurm_gpu.sbatch"]],
    cwd=train_helpers.REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert result.returncode == status, result.stderr
  srun, *others = calls.read_text().splitlines()
  assert srun.startswith("srun --kill-on-bad-exit=1 python -m sgdnet_jax.main train ")
  assert others == (["scontrol requeue 4242"] if requeued else [])


def test_slurm_job_asks_for_requeue_append_and_a_signal_before_the_time_limit():
  options = [
    line.split()[1]
    for line in (LAUNCH / "slurm_gpu.sbatch").read_text().splitlines()
    if line.startswith("#SBATCH")
  ]
  assert {"--requeue", "--open-mode=append"} <= set(options)
  [signal_option] = [option for option in options if option.startswith("--signal=")]
  assert signal_option.startswith("--signal=TERM@")  # to the tasks, not B: the batch shell
  assert int(signal_option.split("@")[1]) >= 120  # seconds for a checkpoint to a bucket


def test_gke_jobset_restarts_on_the_resume_status_and_fails_on_errors():
  from sgdnet_jax.train import preemption

  spec = yaml.safe_load((LAUNCH / "gke_jobset.yaml").read_text())["spec"]
  [replicated] = spec["replicatedJobs"]
  job = replicated["template"]["spec"]
  pod = job["template"]["spec"]
  exit_rules = [r for r in job["podFailurePolicy"]["rules"] if "onExitCodes" in r]
  assert exit_rules == [
    {
      "action": "FailJob",
      "onExitCodes": {
        "containerName": pod["containers"][0]["name"],
        "operator": "In",
        "values": [preemption.RESUME_EXIT],
      },
    }
  ]
  assert job["backoffLimit"] == 0 and pod["restartPolicy"] == "Never"  # podFailurePolicy needs it
  actions = {
    reason: rule["action"]
    for rule in spec["failurePolicy"]["rules"]
    for reason in rule["onJobFailureReasons"]
  }
  assert actions == {
    "PodFailurePolicy": "RestartJobSetAndIgnoreMaxRestarts",
    "BackoffLimitExceeded": "FailJobSet",
  }
  assert pod["terminationGracePeriodSeconds"] >= 120  # a checkpoint written to a bucket
  assert pod["serviceAccountName"]  # Workload Identity: the bucket's write and delete


_DOCKERFILE_INSTRUCTIONS = {
  "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
  "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}  # fmt: skip


def test_dockerfile_builds_the_image_the_jobset_names():
  """Without a network for `docker build`: every instruction is one Docker knows, the base image's
  Python satisfies the pins, the requirements and jax[tpu] are installed and the package copied
  into the JobSet's working directory."""
  text = (train_helpers.REPO / "Dockerfile").read_text()
  instructions = [
    line.split(None, 1)
    for line in text.replace("\\\n", " ").splitlines()
    if line.strip() and not line.lstrip().startswith("#")
  ]
  assert {name for name, _ in instructions} <= _DOCKERFILE_INSTRUCTIONS, instructions
  assert instructions[0][0] == "FROM"
  python = instructions[0][1].split(":")[1].split("-")[0]
  assert tuple(map(int, python.split("."))) >= (3, 11)  # the oldest the pins (numpy 2.4) accept
  pod = yaml.safe_load((LAUNCH / "gke_jobset.yaml").read_text())["spec"]["replicatedJobs"][0]
  pod = pod["template"]["spec"]["template"]["spec"]
  assert ["WORKDIR", pod["containers"][0]["workingDir"]] in instructions
  runs = " ".join(args for name, args in instructions if name == "RUN")
  assert "pip install -r requirements.txt" in runs and '"jax[tpu]==' in runs
  assert ["COPY", ". ."] in instructions
  ignored = (train_helpers.REPO / ".dockerignore").read_text().split()
  assert {".venv", ".git"} <= set(ignored)


_FLAKY_TRAIN = """#!/usr/bin/env bash
# PYTHON for tpu_worker.sh: exits 75 (stopped with a checkpoint) on its first call, 0 (finished)
# on the next; records its arguments.
echo "$*" >>"$CALLS"
(($(wc -l <"$CALLS") > 1)) || exit 75
"""


@pytest.mark.parametrize("restart", [True, False])
def test_tpu_worker_restarts_a_run_that_asks_to_resume_only_with_restart(tmp_path, restart):
  train = tmp_path / "train"
  train.write_text(_FLAKY_TRAIN)
  train.chmod(0o755)
  status, calls = tmp_path / "logs" / "status", tmp_path / "calls"
  result = subprocess.run(
    ["bash", str(LAUNCH / "tpu_worker.sh"), *(["--restart"] if restart else []), str(status)]
    + ["--config", "c", "--workdir", "w"],
    env=dict(os.environ, RESTART_PAUSE_S="0", PYTHON=str(train), CALLS=str(calls)),
    capture_output=True,
    text=True,
    timeout=60,
  )
  expected = 0 if restart else 75
  assert (result.returncode, status.read_text().strip()) == (expected, str(expected))
  train_call = "-m sgdnet_jax.main train --config c --workdir w"
  assert calls.read_text().splitlines() == [train_call] * (2 if restart else 1)


def test_tpu_worker_passes_sigterm_on_and_does_not_restart_after_it(tmp_path):
  train = tmp_path / "train"  # saves on SIGTERM and exits 75, as train does
  train.write_text(
    "#!/usr/bin/env bash\ntrap 'kill $!; exit 75' TERM\necho started >>\"$CALLS\"\n"
    "sleep 60 & wait\n"
  )
  train.chmod(0o755)
  status, calls = tmp_path / "status", tmp_path / "calls"
  worker = subprocess.Popen(
    ["bash", str(LAUNCH / "tpu_worker.sh"), "--restart", str(status), "--config", "c"],
    env=dict(os.environ, RESTART_PAUSE_S="0", PYTHON=str(train), CALLS=str(calls)),
  )
  try:
    _wait_for(calls)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 75
  finally:
    worker.kill()
  assert status.read_text().strip() == "75" and calls.read_text().splitlines() == ["started"]
