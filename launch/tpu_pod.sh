#!/usr/bin/env bash
# Cloud TPU VM pod slice: set up every worker, run `train` detached on all of them, read the logs,
# stop the run. Run from the repository root.
#   launch/tpu_pod.sh [--dry-run] setup TPU_NAME ZONE
#   launch/tpu_pod.sh [--dry-run] run   TPU_NAME ZONE [--restart] --config CONFIG --workdir WORKDIR [overrides]
#   launch/tpu_pod.sh [--dry-run] logs  TPU_NAME ZONE [WORKER|all]   (default worker 0; LOG_LINES=50)
#   launch/tpu_pod.sh [--dry-run] stop  TPU_NAME ZONE
# setup: the repository's files (git ls-files: tracked and untracked, not ignored) go in one archive
#   to every worker (`gcloud compute tpus tpu-vm scp --worker=all`), are unpacked into REMOTE_DIR
#   and get a .venv with requirements.txt and jax[tpu] at the pinned jax version, made with
#   REMOTE_PYTHON when it is 3.11 or newer, else with python3.11 installed from the deadsnakes PPA
#   (the TPU VM base images of Ubuntu 22.04 have 3.10).
# run: every worker starts `train --config.distributed=on ARGS` under nohup through
#   launch/tpu_worker.sh, detached from the ssh session (a dropped connection does not stop it);
#   its output goes to REMOTE_DIR/logs/train.<worker hostname>.log, its pid and, once it ends, its
#   exit status (0 finished, 75 stopped with a checkpoint, else failed) next to it.
#   jax.distributed.initialize() finds the slice through the TPU metadata server; process 0 prints
#   `jax: process 0 of N (gcetpu), local devices 4 [tpu:0, ...], global devices 4N (tpu)`.
#   With SGDNET_JAX_PLATFORM=tpu, a worker whose JAX is not on the TPU stops with one line.
#   WORKDIR must be storage every worker shares (e.g. gs://bucket/run); running again resumes.
#   --restart: a run that stops with a checkpoint (exit 75, e.g. a maintenance event's SIGTERM
#   that the VMs survive) starts again on every worker and resumes. A spot or preempted slice is
#   gone instead: recreate it (a queued resource, docs/launch.md), then setup and run again.
# TPU_NAME may be a queued resource's node id (--node-id): its workers are the same TPU VMs.
# stop: SIGTERM to every worker's run, which saves a checkpoint at the next step and exits (75;
#   --restart does not restart it).
# --dry-run prints the exact commands instead of running them; --help prints this text. Both
# (and run's --restart) may stand anywhere on the line; any other option of this script is
# refused before gcloud runs.
# Arguments keep their spaces and quotes through the remote shell (each is quoted with printf %q).
# Environment: REMOTE_DIR (default sgdnet_jax, in the workers' home), REMOTE_PYTHON (the workers'
# Python >= 3.11 with venv, default python3), GCLOUD_FLAGS (extra flags for every gcloud call,
# e.g. "--project=my-project --tunnel-through-iap"), LOG_LINES (lines `logs` shows, default 50).
set -euo pipefail
usage="usage: launch/tpu_pod.sh [--dry-run] {setup|run|logs|stop} TPU_NAME ZONE [args]"
for arg in "$@"; do
  if [[ "$arg" == -h || "$arg" == --help ]]; then
    awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "${BASH_SOURCE[0]}"
    exit 0
  fi
done
dry_run=0
restart=0
words=()
for arg in "$@"; do
  case "$arg" in
    --dry-run) dry_run=1 ;;
    --restart) restart=1 ;;
    *) words+=("$arg") ;;
  esac
done
set -- ${words[@]+"${words[@]}"}
refuse_option() {
  echo "error: unknown option '$1' (this script takes --dry-run, --help and run's --restart);" \
    "$usage" >&2
  exit 2
}
for ((i = 1; i <= 3 && i <= $#; i++)); do
  [[ "${!i}" != -* ]] || refuse_option "${!i}"
done
if (($# < 3)); then
  echo "error: give a subcommand, TPU_NAME and ZONE; $usage" >&2
  exit 2
fi
subcommand=$1
tpu=$2
zone=$3
shift 3
if ((restart)) && [[ "$subcommand" != run ]]; then
  echo "error: --restart is an option of run, not of $subcommand; $usage" >&2
  exit 2
fi
if [[ "$subcommand" != run ]]; then  # run's arguments are train's; the others take no options
  for arg in "$@"; do
    [[ "$arg" != -* ]] || refuse_option "$arg"
  done
fi
remote_dir=${REMOTE_DIR:-sgdnet_jax}
remote_python=${REMOTE_PYTHON:-python3}
read -ra gcloud_flags <<<"${GCLOUD_FLAGS:-}"

# One word as the shell reads it back: as is when plain, else single-quoted.
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then printf '%s' "$1"; else printf '%s' "${1@Q}"; fi
}

# Prints the command (each word quoted) under --dry-run, runs it otherwise.
invoke() {
  if ((dry_run)); then
    local words=()
    for word in "$@"; do words+=("$(quote "$word")"); done
    printf '%s\n' "${words[*]}"
  else
    "$@"
  fi
}

# Runs a shell command line on the given workers (all, or a worker index).
on_workers() {
  invoke gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker="$1" \
    "${gcloud_flags[@]}" --command="$2"
}

remote_dir_q=$(printf %q "$remote_dir")
log_prefix="logs/train.\$(hostname)"

case "$subcommand" in
  setup)
    (($# == 0)) || { echo "error: setup takes no arguments; $usage" >&2; exit 2; }
    jax_version=$(sed -n 's/^jax==//p' requirements.txt)
    archive="${TMPDIR:-/tmp}/sgdnet_jax-$tpu.tar.gz"
    if ((dry_run)); then
      echo "git ls-files -z --cached --others --exclude-standard |" \
        "tar -czf $(quote "$archive") --null -T -"
    else
      git ls-files -z --cached --others --exclude-standard | tar -czf "$archive" --null -T -
    fi
    invoke gcloud compute tpus tpu-vm scp "$archive" "$tpu:sgdnet_jax.tar.gz" --zone="$zone" \
      --worker=all "${gcloud_flags[@]}"
    invoke rm -f "$archive"
    python_q=$(printf %q "$remote_python")
    on_workers all "mkdir -p $remote_dir_q && tar -xzf sgdnet_jax.tar.gz -C $remote_dir_q \
&& rm sgdnet_jax.tar.gz && cd $remote_dir_q && python=$python_q \
&& if ! \$python -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then \
sudo add-apt-repository -y ppa:deadsnakes/ppa && sudo apt-get install -y python3.11-venv \
&& python=python3.11; fi && \$python -m venv .venv \
&& .venv/bin/pip install --quiet --upgrade pip \
&& .venv/bin/pip install --quiet -r requirements.txt $(printf %q "jax[tpu]==$jax_version")"
    ;;
  run)
    if (($# == 0)); then
      echo "error: run needs train's arguments (--config ... --workdir ...); $usage" >&2
      exit 2
    fi
    printf -v train_args ' %q' "$@"
    on_workers all "cd $remote_dir_q && mkdir -p logs \
&& { SGDNET_JAX_PLATFORM=tpu nohup launch/tpu_worker.sh$( ((restart)) && echo " --restart") $log_prefix.status \
--config.distributed=on${train_args} >>$log_prefix.log 2>&1 </dev/null & \
echo \$! >$log_prefix.pid; }"
    ;;
  logs)
    if (($# > 1)) || [[ ! "${1:-0}" =~ ^([0-9]+|all)$ ]]; then
      echo "error: logs takes at most a worker index or 'all'; $usage" >&2
      exit 2
    fi
    on_workers "${1:-0}" "cd $remote_dir_q && tail -n $(printf %q "${LOG_LINES:-50}") $log_prefix.log"
    ;;
  stop)
    (($# == 0)) || { echo "error: stop takes no arguments; $usage" >&2; exit 2; }
    on_workers all "cd $remote_dir_q && kill -TERM \$(cat $log_prefix.pid)"
    ;;
  *)
    echo "error: unknown subcommand '$subcommand'; $usage" >&2
    exit 2
    ;;
esac
