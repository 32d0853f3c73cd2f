#!/usr/bin/env bash
# AFP training on a Cloud TPU VM slice (v4-32, v5e-64, ...): create, set up, run on every worker, follow, stop.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
Usage: launch/gcp.sh [SETTINGS] COMMAND [-- EXTRA MAIN ARGS]

Commands
  create   create the TPU VM (or a queued resource with --queued)
  setup    put the code on every worker (git clone of --repo at --ref, or this checkout's HEAD) and pip install it
  run      start `python -m xalign_jax.main` on every worker in the background; logs in ~/xalign_logs/worker-N.log
  tail     follow one worker's log (--worker, default 0)
  stop     send SIGTERM to the run on every worker: it writes a checkpoint and exits (resume: `run` again)
  status   describe the TPU and say, per worker, whether the run is alive, with its last log line
  delete   delete the TPU VM (or the queued resource)

Settings (flag, or environment variable; flags win)
  --project P        XALIGN_PROJECT       GCP project (required)
  --zone Z           XALIGN_ZONE          zone, e.g. us-central2-b (v4) or us-west4-a (v5e) (required)
  --name N           XALIGN_TPU_NAME      TPU VM / queued resource name (default: xalign)
  --tpu-type T       XALIGN_TPU_TYPE      accelerator type (default: v4-32; e.g. v5litepod-64)
  --runtime R        XALIGN_RUNTIME       runtime version (default: derived from the TPU type)
  --queued           XALIGN_QUEUED=1      create through a queued resource (waits for capacity)
  --spot             XALIGN_SPOT=1        spot capacity (preemptible: re-run `run` after preemption to resume)
  --repo URL         XALIGN_REPO          git URL to clone on the workers (default: copy this checkout's HEAD)
  --ref REF          XALIGN_REF           branch, tag or commit for --repo (default: main)
  --pip-extras E     XALIGN_PIP_EXTRAS    extras of the package to install (default: models)
  --config C         XALIGN_CONFIG        config for `run`, e.g. configs/bloom.py:7b1 (required for run)
  --workdir W        XALIGN_WORKDIR       run directory every worker shares, e.g. /mnt/shared/runs/bloom (required for run)
  --worker I         XALIGN_WORKER        worker for `tail` (default: 0)
  --extra "ARGS"     XALIGN_EXTRA_ARGS    extra arguments for xalign_jax.main (also: everything after --)
  --dry-run          XALIGN_DRY_RUN=1     print the gcloud commands instead of running them
  -h, --help         this help

Example
  launch/gcp.sh --project my-proj --zone us-central2-b --tpu-type v4-32 create
  launch/gcp.sh --project my-proj --zone us-central2-b setup
  launch/gcp.sh --project my-proj --zone us-central2-b --config configs/bloom.py:7b1 \
      --workdir /mnt/shared/runs/bloom7b1 run -- --config.model.source=/mnt/shared/models/bloom-7b1
EOF
}

PROJECT="${XALIGN_PROJECT:-}"
ZONE="${XALIGN_ZONE:-}"
NAME="${XALIGN_TPU_NAME:-xalign}"
TPU_TYPE="${XALIGN_TPU_TYPE:-v4-32}"
RUNTIME="${XALIGN_RUNTIME:-}"
QUEUED="${XALIGN_QUEUED:-0}"
SPOT="${XALIGN_SPOT:-0}"
REPO="${XALIGN_REPO:-}"
REF="${XALIGN_REF:-main}"
PIP_EXTRAS="${XALIGN_PIP_EXTRAS:-models}"
CONFIG="${XALIGN_CONFIG:-}"
WORKDIR="${XALIGN_WORKDIR:-}"
WORKER="${XALIGN_WORKER:-0}"
read -r -a EXTRA_ARGS <<<"${XALIGN_EXTRA_ARGS:-}"
REMOTE_CODE="xalign-jax"          # relative to the remote home
REMOTE_LOGS="xalign_logs"
WORKER_INDEX='$(curl -sf -H "Metadata-Flavor: Google" http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number || echo 0)'

declare -A VALUE_FLAGS=([--project]=PROJECT [--zone]=ZONE [--name]=NAME [--tpu-type]=TPU_TYPE [--runtime]=RUNTIME
  [--repo]=REPO [--ref]=REF [--pip-extras]=PIP_EXTRAS [--config]=CONFIG [--workdir]=WORKDIR [--worker]=WORKER)
declare -A SWITCH_FLAGS=([--queued]=QUEUED=1 [--spot]=SPOT=1)

parse_args() {
  parse_settings "$@"
  [[ ${#POSITIONAL[@]} -le 1 ]] || die "one command at a time (got ${POSITIONAL[*]})"
  COMMAND="${POSITIONAL[0]:-}"
}

validate() {
  [[ -n "$COMMAND" ]] || die "missing command: create | setup | run | tail | stop | status | delete (see --help)"
  require_choice "$COMMAND" "command" create setup run tail stop status delete
  require "$PROJECT" --project XALIGN_PROJECT
  require "$ZONE" --zone XALIGN_ZONE
  [[ "$NAME" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] || die "--name=$NAME: lower-case letters, digits and dashes"
  [[ "$TPU_TYPE" =~ ^v[0-9]+[a-z]*-[0-9]+$ ]] || die "--tpu-type=$TPU_TYPE: expected e.g. v4-32 or v5litepod-64"
  [[ "$WORKER" =~ ^[0-9]+$ ]] || die "--worker=$WORKER: expected a worker index"
  require_choice "$QUEUED" "--queued (XALIGN_QUEUED)" 0 1
  require_choice "$SPOT" "--spot (XALIGN_SPOT)" 0 1
  if [[ "$COMMAND" == run ]]; then
    require "$CONFIG" --config XALIGN_CONFIG
    require "$WORKDIR" --workdir XALIGN_WORKDIR
  fi
  RUNTIME="${RUNTIME:-$(default_runtime "$TPU_TYPE")}"
  LOCATION=("--project=$PROJECT" "--zone=$ZONE")
}

# The TPU software version that matches a generation (Cloud TPU docs, "TPU VM images").
default_runtime() {
  case "$1" in
    v5litepod-*|v5e-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) echo tpu-ubuntu2204-base ;;
  esac
}

gcloud_tpu() {           # gcloud compute tpus tpu-vm VERB NAME ARGS... --project --zone
  local verb="$1"
  shift
  invoke gcloud compute tpus tpu-vm "$verb" "$NAME" "$@" "${LOCATION[@]}"
}

on_workers() {           # on_workers WORKER REMOTE_SHELL_COMMAND
  gcloud_tpu ssh "--worker=$1" "--command=$2"
}

cmd_create() {
  local -a spot=()
  [[ "$SPOT" == 1 ]] && spot=(--spot)
  if [[ "$QUEUED" == 1 ]]; then
    invoke gcloud compute tpus queued-resources create "$NAME" "--node-id=$NAME" "--accelerator-type=$TPU_TYPE" \
      "--runtime-version=$RUNTIME" "${spot[@]+"${spot[@]}"}" "${LOCATION[@]}"
  else
    gcloud_tpu create "--accelerator-type=$TPU_TYPE" "--version=$RUNTIME" "${spot[@]+"${spot[@]}"}"
  fi
}

cmd_setup() {
  if [[ -n "$REPO" ]]; then
    on_workers all "if [ -d $REMOTE_CODE/.git ]; then :; else git clone --quiet $(quote_words "$REPO") $REMOTE_CODE; fi \
&& git -C $REMOTE_CODE fetch --quiet origin $(quote_words "$REF") && git -C $REMOTE_CODE checkout --quiet --detach FETCH_HEAD"
  else
    local root archive
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    archive="${TMPDIR:-/tmp}/xalign-src-$NAME.tar.gz"
    invoke git -C "$root" archive --format=tar.gz -o "$archive" HEAD
    invoke gcloud compute tpus tpu-vm scp "$archive" "$NAME:xalign-src.tar.gz" --worker=all "${LOCATION[@]}"
    on_workers all "mkdir -p $REMOTE_CODE && tar -xzf xalign-src.tar.gz -C $REMOTE_CODE"
  fi
  on_workers all "cd $REMOTE_CODE && python3 -m pip install --quiet --upgrade 'jax[tpu]' -e $(quote_words ".[$PIP_EXTRAS]")"
}

cmd_run() {
  local main
  main="HF_HUB_OFFLINE=1 nohup python3 -m xalign_jax.main $(quote_words "--config=$CONFIG" "--workdir=$WORKDIR" \
    "${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}")"
  on_workers all "mkdir -p $REMOTE_LOGS && cd $REMOTE_CODE || exit 1; W=$WORKER_INDEX; \
if [ -f ~/$REMOTE_LOGS/main.pid ] && kill -0 \$(cat ~/$REMOTE_LOGS/main.pid) 2>/dev/null; then \
echo \"worker \$W: already running\" >&2; exit 1; fi; \
$main > ~/$REMOTE_LOGS/worker-\$W.log 2>&1 < /dev/null & echo \$! > ~/$REMOTE_LOGS/main.pid"
}

cmd_tail() {
  on_workers "$WORKER" "tail -n 200 -F $REMOTE_LOGS/worker-$WORKER.log"
}

cmd_stop() {
  on_workers all "[ -f $REMOTE_LOGS/main.pid ] && kill -TERM \$(cat $REMOTE_LOGS/main.pid) 2>/dev/null || true"
}

cmd_status() {
  if [[ "$QUEUED" == 1 ]]; then
    invoke gcloud compute tpus queued-resources describe "$NAME" "${LOCATION[@]}"
  fi
  gcloud_tpu describe
  on_workers all "W=$WORKER_INDEX; if [ -f $REMOTE_LOGS/main.pid ] && kill -0 \$(cat $REMOTE_LOGS/main.pid) 2>/dev/null; \
then echo \"worker \$W: running\"; else echo \"worker \$W: not running\"; fi; tail -n 1 $REMOTE_LOGS/worker-\$W.log 2>/dev/null || true"
}

cmd_delete() {
  if [[ "$QUEUED" == 1 ]]; then
    invoke gcloud compute tpus queued-resources delete "$NAME" --force --quiet "${LOCATION[@]}"
  else
    gcloud_tpu delete --quiet
  fi
}

parse_args "$@"
validate
"cmd_$COMMAND"
