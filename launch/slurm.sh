#!/usr/bin/env bash
# AFP training on a multi-node GPU cluster under SLURM: writes an sbatch script and submits it.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
Usage: launch/slurm.sh [SETTINGS] [submit] [-- EXTRA MAIN ARGS]

Writes LOG_DIR/JOB_NAME.sbatch and submits it with sbatch. Inside the job, `srun` starts
`python -m xalign_jax.main` once per node (default) or once per GPU; xalign_jax.distributed reads the SLURM
variables (coordinator = first node), so no address or rank flags are needed. Each task logs to
LOG_DIR/JOB_NAME-JOBID-taskN.log. SLURM sends SIGTERM 5 minutes before the time limit (and on preemption): the run
writes a checkpoint and exits. With --requeue (default) SLURM restarts a job that was preempted or lost a node,
and it resumes from that checkpoint; a job that reached its time limit ends: submit it again to continue.

Settings (flag, or environment variable; flags win)
  --nodes N            XALIGN_NODES            nodes (default: 2)
  --gpus-per-node G    XALIGN_GPUS_PER_NODE    GPUs per node (default: 8)
  --task-per node|gpu  XALIGN_TASK_PER         one process per node driving all its GPUs (default), or one per GPU
  --partition P        XALIGN_PARTITION        partition (default: the cluster's default)
  --account A          XALIGN_ACCOUNT          account to charge (default: none)
  --time T             XALIGN_TIME             time limit, [D-]HH:MM:SS (default: 24:00:00)
  --job-name J         XALIGN_JOB_NAME         job name (default: xalign)
  --no-requeue         XALIGN_REQUEUE=0        do not requeue after preemption or node failure
  --config C           XALIGN_CONFIG           config, e.g. configs/xglm.py:7.5b (required)
  --workdir W          XALIGN_WORKDIR          run directory on a shared file system (required)
  --log-dir L          XALIGN_LOG_DIR          where the sbatch script and task logs go (default: WORKDIR/slurm)
  --code-dir D         XALIGN_CODE_DIR         the checkout on the shared file system (default: this checkout)
  --python PY          XALIGN_PYTHON           interpreter with the package installed (default: python3)
  --extra "ARGS"       XALIGN_EXTRA_ARGS       extra arguments for xalign_jax.main (also: everything after --)
  --dry-run            XALIGN_DRY_RUN=1        print the sbatch script and the commands instead of running them
  -h, --help           this help

Example
  launch/slurm.sh --nodes 2 --partition h100 --config configs/xglm.py:7.5b --workdir /shared/runs/xglm7b5 \
      -- --config.model.source=/shared/models/xglm-7.5B
EOF
}

NODES="${XALIGN_NODES:-2}"
GPUS_PER_NODE="${XALIGN_GPUS_PER_NODE:-8}"
TASK_PER="${XALIGN_TASK_PER:-node}"
PARTITION="${XALIGN_PARTITION:-}"
ACCOUNT="${XALIGN_ACCOUNT:-}"
TIME_LIMIT="${XALIGN_TIME:-24:00:00}"
JOB_NAME="${XALIGN_JOB_NAME:-xalign}"
REQUEUE="${XALIGN_REQUEUE:-1}"
CONFIG="${XALIGN_CONFIG:-}"
WORKDIR="${XALIGN_WORKDIR:-}"
LOG_DIR="${XALIGN_LOG_DIR:-}"
CODE_DIR="${XALIGN_CODE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
PYTHON="${XALIGN_PYTHON:-python3}"
read -r -a EXTRA_ARGS <<<"${XALIGN_EXTRA_ARGS:-}"
PREEMPTION_NOTICE_S=300

declare -A VALUE_FLAGS=([--nodes]=NODES [--gpus-per-node]=GPUS_PER_NODE [--task-per]=TASK_PER
  [--partition]=PARTITION [--account]=ACCOUNT [--time]=TIME_LIMIT [--job-name]=JOB_NAME [--config]=CONFIG
  [--workdir]=WORKDIR [--log-dir]=LOG_DIR [--code-dir]=CODE_DIR [--python]=PYTHON)
declare -A SWITCH_FLAGS=([--no-requeue]=REQUEUE=0)

parse_args() {
  parse_settings "$@"
  local word
  for word in "${POSITIONAL[@]+"${POSITIONAL[@]}"}"; do
    [[ "$word" == submit ]] || die "unknown argument $word (see --help)"
  done
}

validate() {
  [[ "$NODES" =~ ^[1-9][0-9]*$ ]] || die "--nodes=$NODES: expected a positive integer"
  [[ "$GPUS_PER_NODE" =~ ^[1-9][0-9]*$ ]] || die "--gpus-per-node=$GPUS_PER_NODE: expected a positive integer"
  require_choice "$TASK_PER" --task-per node gpu
  require_choice "$REQUEUE" "XALIGN_REQUEUE" 0 1
  [[ "$TIME_LIMIT" =~ ^([0-9]+-)?[0-9]+(:[0-9]{2}){0,2}$ ]] || die "--time=$TIME_LIMIT: expected [D-]HH:MM:SS"
  [[ "$JOB_NAME" =~ ^[-A-Za-z0-9_.]+$ ]] || die "--job-name=$JOB_NAME: letters, digits, '-', '_', '.'"
  require "$CONFIG" --config XALIGN_CONFIG
  require "$WORKDIR" --workdir XALIGN_WORKDIR
  LOG_DIR="${LOG_DIR:-$WORKDIR/slurm}"
  [[ "$WORKDIR" == /* ]] || die "--workdir=$WORKDIR: give an absolute path on a file system every node sees"
  [[ "$LOG_DIR" == /* && "$LOG_DIR" != *[[:space:]]* ]] || \
    die "--log-dir=$LOG_DIR: give an absolute path without spaces (#SBATCH lines cannot quote)"
}

sbatch_script() {
  local tasks_per_node=1
  [[ "$TASK_PER" == gpu ]] && tasks_per_node="$GPUS_PER_NODE"
  cat <<EOF
#!/bin/bash
#SBATCH --job-name=$JOB_NAME
#SBATCH --nodes=$NODES
#SBATCH --ntasks-per-node=$tasks_per_node
#SBATCH --gpus-per-node=$GPUS_PER_NODE
#SBATCH --exclusive
#SBATCH --time=$TIME_LIMIT
#SBATCH --output=$LOG_DIR/%x-%j.out
#SBATCH --signal=TERM@$PREEMPTION_NOTICE_S
EOF
  [[ -n "$PARTITION" ]] && echo "#SBATCH --partition=$PARTITION"
  [[ -n "$ACCOUNT" ]] && echo "#SBATCH --account=$ACCOUNT"
  [[ "$REQUEUE" == 1 ]] && echo "#SBATCH --requeue"
  cat <<EOF
# Generated by launch/slurm.sh. Every task runs the same program; xalign_jax.distributed reads SLURM_NTASKS,
# SLURM_PROCID and the node list (coordinator = first node). Re-running this script resumes from WORKDIR.
set -euo pipefail
cd $(quote_words "$CODE_DIR")
export HF_HUB_OFFLINE=1
export XLA_PYTHON_CLIENT_MEM_FRACTION=\${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}
srun --kill-on-bad-exit=1 --output=$(quote_words "$LOG_DIR/%x-%j-task%t.log") \\
  $(quote_words "$PYTHON" -m xalign_jax.main "--config=$CONFIG" "--workdir=$WORKDIR" \
    "${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}")
EOF
}

submit() {
  local script_file="$LOG_DIR/$JOB_NAME.sbatch"
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "# $script_file"
    sbatch_script
  fi
  invoke mkdir -p "$LOG_DIR"
  [[ "$DRY_RUN" == 1 ]] || sbatch_script >"$script_file"
  invoke sbatch "$script_file"
}

parse_args "$@"
validate
submit
