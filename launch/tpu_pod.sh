#!/usr/bin/env bash
# Runs an experiment on a Cloud TPU VM pod slice: creates the slice, copies
# this checkout to every worker and installs it, runs experiments.main on all
# workers at once (JAX finds the other hosts by itself), collects the logs,
# and deletes the slice (also when the run fails; --keep to keep it).
#
#   launch/tpu_pod.sh --name=my-pod --zone=us-central2-b \
#       --accelerator-type=v4-32 --config=experiments/arithmetic/config.py:grpo \
#       --workdir=gs://my-bucket/runs/grpo [--project=my-project] \
#       [--version=tpu-ubuntu2204-base] [--logs=logs] [--keep] [--dry-run] \
#       [-- --config.mesh.fsdp=-1 ...]
#
# The workdir must be storage every host reaches (gs://...): all hosts write
# their checkpoint shards there and process 0 writes metrics and summaries.
# A run restarted with the same --workdir resumes. Everything after `--` is
# passed to experiments.main.
set -euo pipefail
source "$(dirname "$0")/common.sh"

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }

NAME='' ZONE='' TYPE='' PROJECT='' VERSION='tpu-ubuntu2204-base'
CONFIG='' WORKDIR='' LOGS='logs' KEEP=0
while (( $# )); do
  case "$1" in
    --name=*) NAME="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --accelerator-type=*) TYPE="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --version=*) VERSION="${1#*=}" ;;
    --config=*) CONFIG="${1#*=}" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --logs=*) LOGS="${1#*=}" ;;
    --keep) KEEP=1 ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
require NAME "$NAME" --name
require ZONE "$ZONE" --zone
require TYPE "$TYPE" --accelerator-type
require CONFIG "$CONFIG" --config
require WORKDIR "$WORKDIR" --workdir
[[ "$WORKDIR" == gs://* ]] || echo "warning: --workdir=$WORKDIR is not gs://;" \
  "every host must reach it for checkpoints" >&2

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
tpu=(gcloud compute tpus tpu-vm)
where=("--zone=$ZONE")
[[ -n "$PROJECT" ]] && where+=("--project=$PROJECT")
ARCHIVE="/tmp/jaxrlgen-$NAME.tar.gz"
# The command each worker runs, quoted once for the remote shell.
remote_main="$(quote python3 -m experiments.main "--config=$CONFIG" \
  "--workdir=$WORKDIR" "$@")"
setup='mkdir -p ~/jaxrlgen && tar -xzf ~/jaxrlgen.tar.gz -C ~/jaxrlgen'
setup+=' && pip install -q "jax[tpu]" -e ~/jaxrlgen'

cleanup() {
  (( KEEP )) || run "${tpu[@]}" delete "$NAME" "${where[@]}" --quiet
}

run "${tpu[@]}" create "$NAME" "${where[@]}" "--accelerator-type=$TYPE" \
  "--version=$VERSION"
trap cleanup EXIT
# The checkout as committed plus local changes, without build outputs.
run tar --exclude=.git --exclude=.venv --exclude='*.egg-info' \
  --exclude=__pycache__ -czf "$ARCHIVE" -C "$ROOT" .
run "${tpu[@]}" scp "$ARCHIVE" "$NAME:~/jaxrlgen.tar.gz" "${where[@]}" \
  --worker=all
run "${tpu[@]}" ssh "$NAME" "${where[@]}" --worker=all "--command=$setup"
run mkdir -p "$LOGS"
if (( DRY_RUN )); then
  quote "${tpu[@]}" ssh "$NAME" "${where[@]}" --worker=all \
    "--command=cd ~/jaxrlgen && $remote_main 2>&1 | tee ~/jaxrlgen.log"
  echo "(output also saved to $LOGS/$NAME.log)"
else
  "${tpu[@]}" ssh "$NAME" "${where[@]}" --worker=all \
    "--command=cd ~/jaxrlgen && $remote_main 2>&1 | tee ~/jaxrlgen.log" \
    2>&1 | tee "$LOGS/$NAME.log"
fi
# Process 0's full log (its progress bar and memory table).
run "${tpu[@]}" scp "$NAME:~/jaxrlgen.log" "$LOGS/$NAME-worker0.log" \
  "${where[@]}" --worker=0
