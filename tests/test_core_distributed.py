"""`config.distributed='auto'` initialises exactly where JAX's cluster detection can, and the
GPUs each process of a SLURM node claims are the ones `launch/slurm_gpu.sbatch` promises."""

import os
import re

import jax
import pytest
from jax._src import clusters
from jax._src.clusters import cloud_tpu_cluster
from jax._src.clusters import cluster as cluster_lib

from sgdnet_jax.core import backend, distributed, errors
from tests import train_helpers

# Every variable a cluster environment (or our explicit launcher) is recognised by.
_CLUSTER_VARIABLES = re.compile(
  r"^(SLURM_|OMPI_|PMIX_|TPU_|MEGASCALE_|JAX_COORDINATOR|JAX_NUM_PROCESSES|JAX_PROCESS_ID|"
  r"JAX_LOCAL_DEVICE_IDS|KUBERNETES_SERVICE_HOST|CUDA_VISIBLE_DEVICES)"
)


@pytest.fixture
def calls(monkeypatch):
  """A clean environment; `jax.distributed.initialize` records its keyword arguments instead."""
  for name in list(os.environ):
    if _CLUSTER_VARIABLES.match(name):
      monkeypatch.delenv(name)
  recorded = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: recorded.append(kwargs))
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setattr(distributed, "_described", False)
  monkeypatch.setattr(distributed, "_source", "one process")
  collectives = jax.config.jax_cpu_collectives_implementation
  yield recorded
  jax.config.update("jax_cpu_collectives_implementation", collectives)


def _slurm_step(monkeypatch, ntasks: int, procid: int, localid: int, **more):
  """The variables `srun` sets for one task of a step on node001..node002 (job 4242)."""
  variables = {
    "SLURM_JOB_ID": "4242",
    "SLURM_NODELIST": "node[001-002]",
    "SLURM_JOB_NODELIST": "node[001-002]",
    "SLURM_STEP_NODELIST": "node[001-002]",
    "SLURM_NTASKS": str(ntasks),
    "SLURM_STEP_NUM_TASKS": str(ntasks),
    "SLURM_PROCID": str(procid),
    "SLURM_LOCALID": str(localid),
    **more,
  }
  for name, value in variables.items():
    monkeypatch.setenv(name, value)


def _cloud_tpu_vm(monkeypatch, metadata: dict[str, str]):
  """A Cloud TPU VM: what `cloud_tpu_init` found at `import jax`, and its metadata server (a GKE
  node's answers 404 to the TPU VM keys)."""
  monkeypatch.setattr(cluster_lib, "running_in_cloud_tpu_vm", True)
  monkeypatch.setattr(cloud_tpu_cluster, "running_in_cloud_tpu_vm", True)

  def get_metadata(key):
    return (metadata[key], 200) if key in metadata else ("not found", 404)

  monkeypatch.setattr(cloud_tpu_cluster, "get_metadata", get_metadata)


def _jax_detection(local_device_ids=None) -> tuple:
  """What `jax.distributed.initialize(local_device_ids=...)` fills in from the environment."""
  return clusters.ClusterEnv.auto_detect_unset_distributed_params(
    None, None, None, local_device_ids, None, 1
  )


def test_slurm_inside_srun_initialises_through_jax_slurm_detection(calls, monkeypatch, capsys):
  _slurm_step(monkeypatch, ntasks=16, procid=9, localid=1)
  distributed.initialize("auto")
  assert calls == [{"local_device_ids": None}]
  # JAX's port for job 4242: 4242 % 4096 + 61440.
  assert _jax_detection() == ("node001:61586", 16, 9, [1])
  assert jax.config.jax_cpu_collectives_implementation == "gloo"
  assert "(slurm)" in capsys.readouterr().out


def test_salloc_shell_and_one_task_step_stay_one_process(calls, monkeypatch, capsys):
  # salloc: the allocation's variables, no step (no SLURM_STEP_NODELIST, SLURM_PROCID, ...),
  # where the old rule (SLURM_NTASKS > 1) initialised and JAX found no cluster.
  for name, value in {
    "SLURM_JOB_ID": "4242",
    "SLURM_NODELIST": "node[001-002]",
    "SLURM_JOB_NODELIST": "node[001-002]",
    "SLURM_NTASKS": "16",
    "SLURM_JOB_NUM_NODES": "2",
  }.items():
    monkeypatch.setenv(name, value)
  assert distributed.detected_cluster() is None
  distributed.initialize("auto")
  assert calls == []
  assert capsys.readouterr().out.startswith("jax: process 0 of 1 (one process)")
  # `srun -n 1`: JAX would initialise one process and claim GPU 0 only of the node's GPUs.
  _slurm_step(monkeypatch, ntasks=1, procid=0, localid=0)
  assert distributed.detected_cluster() is clusters.SlurmCluster
  distributed.initialize("auto")
  assert calls == []


def test_open_mpi_4_initialises_and_open_mpi_5_is_not_detected_by_jax(calls, monkeypatch):
  for name, value in {
    "OMPI_COMM_WORLD_SIZE": "4",
    "OMPI_COMM_WORLD_RANK": "3",
    "OMPI_COMM_WORLD_LOCAL_RANK": "1",
    "PMIX_RANK": "3",
    "PMIX_SERVER_URI41": "pmix-server.1234;tcp4://10.0.0.7:41000",
  }.items():
    monkeypatch.setenv(name, value)
  # Open MPI 5 (PMIx only): JAX's OmpiCluster looks for OMPI_MCA_orte_hnp_uri and finds no
  # cluster, so `auto` stays one process rather than fail.
  assert distributed.detected_cluster() is None
  distributed.initialize("auto")
  assert calls == []
  monkeypatch.setenv("OMPI_MCA_orte_hnp_uri", "1531576320.0;tcp://10.0.0.7,10.148.0.1:34911")
  assert distributed.detected_cluster() is clusters.OmpiCluster
  distributed.initialize("auto")
  assert calls == [{"local_device_ids": None}]
  # Port: the Open MPI job id 1531576320 / 4096 = 373920, 373920 % 4096 + 61440.
  assert _jax_detection() == ("10.0.0.7:62624", 4, 3, [1])


def test_gke_tpu_slice_initialises_with_every_chip_of_the_host(calls, monkeypatch):
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "host-0,host-1,host-2,host-3")
  monkeypatch.setenv("TPU_WORKER_ID", "2")
  # One slice: JAX looks the slice count up in the metadata's tpu-env, which has none.
  _cloud_tpu_vm(monkeypatch, {"tpu-env": "ACCELERATOR_TYPE: 'v5litepod-16'\n"})
  assert distributed.detected_cluster() is clusters.GkeTpuCluster
  distributed.initialize("auto")
  assert calls == [{"local_device_ids": None}]
  assert clusters.GkeTpuCluster.get_process_id() == 2
  # On TPU JAX never narrows the local devices: every chip of the host stays visible.
  assert distributed.local_gpu_ids(clusters.GkeTpuCluster) is None


def test_tpu_vm_initialises_on_a_pod_slice_not_on_a_single_host(calls, monkeypatch):
  endpoints = "w-0:0:10.0.0.2,w-1:1:10.0.0.3"
  _cloud_tpu_vm(
    monkeypatch,
    {"agent-worker-number": "1", "worker-network-endpoints": endpoints, "tpu-env": ""},
  )
  assert distributed.detected_cluster() is clusters.GceTpuCluster
  distributed.initialize("auto")
  assert calls == [{"local_device_ids": None}]
  _cloud_tpu_vm(
    monkeypatch,
    {"agent-worker-number": "0", "worker-network-endpoints": "w-0:0:10.0.0.2", "tpu-env": ""},
  )
  distributed.initialize("auto")
  assert len(calls) == 1


def test_single_machine_explicit_coordinator_and_modes(calls, monkeypatch, capsys):
  distributed.initialize("auto")
  distributed.initialize("off")
  assert calls == []
  assert capsys.readouterr().out.startswith("jax: process 0 of 1 (one process), local devices")
  distributed.initialize("on")
  assert calls == [{"local_device_ids": None}]
  with pytest.raises(errors.ConfigError, match="config.distributed"):
    distributed.initialize("yes")

  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1234")
  with pytest.raises(errors.UserError, match="JAX_NUM_PROCESSES"):
    distributed.initialize("auto")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
  monkeypatch.setenv("JAX_PROCESS_ID", "1")
  distributed.initialize("auto")
  assert calls[-1] == {"num_processes": 2, "process_id": 1}
  _slurm_step(monkeypatch, ntasks=2, procid=1, localid=1)
  distributed.initialize("off")
  assert len(calls) == 2


def _sbatch_options() -> dict[str, str]:
  text = (train_helpers.REPO / "launch" / "slurm_gpu.sbatch").read_text()
  return dict(re.findall(r"^#SBATCH --([a-z-]+)=(\S+)", text, flags=re.MULTILINE))


def test_every_gpu_of_an_8_gpu_node_gets_one_process_of_the_sbatch_layout(calls, monkeypatch):
  options = _sbatch_options()
  gpus_per_node = int(options["gpus-per-node"])
  assert gpus_per_node == int(options["ntasks-per-node"]) == 8
  assert "gpus-per-task" not in options  # It would hide the other GPUs from each task.
  # Node 2 of 2 in that layout: SLURM shows every task the node's 8 GPUs.
  claimed = []
  for localid in range(gpus_per_node):
    _slurm_step(
      monkeypatch,
      ntasks=16,
      procid=8 + localid,
      localid=localid,
      CUDA_VISIBLE_DEVICES=",".join(map(str, range(gpus_per_node))),
    )
    passed = distributed.local_gpu_ids(distributed.detected_cluster())
    claimed.append(_jax_detection(passed)[3])
  assert claimed == [[gpu] for gpu in range(gpus_per_node)]

  # Bound by srun (--gpus-per-task=1): each task sees its one GPU as ordinal 0, where JAX's
  # [SLURM_LOCALID] would name a GPU it cannot see.
  for localid in range(gpus_per_node):
    _slurm_step(monkeypatch, 16, 8 + localid, localid, CUDA_VISIBLE_DEVICES=str(localid))
    assert distributed.local_gpu_ids(distributed.detected_cluster()) == [0]
    distributed.initialize("auto")
    assert calls[-1] == {"local_device_ids": [0]}
  # An explicit JAX_LOCAL_DEVICE_IDS is the user's choice, which JAX applies itself.
  monkeypatch.setenv("JAX_LOCAL_DEVICE_IDS", "0")
  assert distributed.local_gpu_ids(clusters.SlurmCluster) is None


def test_a_launchers_platform_stops_a_process_whose_jax_runs_elsewhere(calls, monkeypatch, capsys):
  monkeypatch.setenv(backend.PLATFORM_ENV, "tpu")  # as launch/tpu_pod.sh and the GKE JobSet
  with pytest.raises(
    errors.UserError, match="JAX's backend is cpu, not tpu, in .*requirements-tpu"
  ):
    distributed.initialize("auto")
  assert "jax: process 0 of 1" in capsys.readouterr().out  # what it got, printed first
  monkeypatch.setattr(distributed, "_described", False)
  monkeypatch.setenv(backend.PLATFORM_ENV, "cpu")
  distributed.initialize("auto")
