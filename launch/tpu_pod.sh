#!/usr/bin/env bash
# Training on a Cloud TPU pod slice: the same command on every worker.
#   launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [--config.x=y ...]
# The repository (with .venv from `make venv` or `pip install -r requirements.txt jax[tpu]`) must
# be at the same path on every worker, and WORKDIR on storage all workers share (e.g. a gs://
# bucket path is fine for Orbax). jax.distributed.initialize() discovers the slice itself
# (config.distributed=on); re-running resumes from WORKDIR.
set -euo pipefail
tpu=${1:?usage: $0 TPU_NAME ZONE CONFIG WORKDIR [overrides]}
zone=${2:?usage: $0 TPU_NAME ZONE CONFIG WORKDIR [overrides]}
config=${3:?usage: $0 TPU_NAME ZONE CONFIG WORKDIR [overrides]}
workdir=${4:?usage: $0 TPU_NAME ZONE CONFIG WORKDIR [overrides]}
shift 4
repo=${REPO_DIR:-$(pwd)}
printf -v extra ' %q' "$@"
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command \
  "cd $(printf %q "$repo") && .venv/bin/python -m sgdnet_jax.main train --config $(printf %q "$config") --workdir $(printf %q "$workdir") --config.distributed=on${extra}"
