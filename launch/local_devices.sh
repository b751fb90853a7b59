#!/usr/bin/env bash
# Runs an experiment on N simulated CPU devices of this machine, optionally
# as P processes that talk through JAX's distributed runtime (a rehearsal of
# a multi-host run: each process holds N/P devices and reads its share of
# the data).
#
#   launch/local_devices.sh --devices=8 \
#       --config=experiments/arithmetic/config.py:grpo --workdir=/tmp/run \
#       [--processes=2] [--port=12355] [--dry-run] [-- --config.mesh.fsdp=2 ...]
#
# Everything after `--` is passed to experiments.main.
set -euo pipefail
source "$(dirname "$0")/common.sh"

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; }

DEVICES=8 PROCESSES=1 PORT=12355 CONFIG='' WORKDIR='' PYTHON="${PYTHON:-python}"
while (( $# )); do
  case "$1" in
    --devices=*) DEVICES="${1#*=}" ;;
    --processes=*) PROCESSES="${1#*=}" ;;
    --port=*) PORT="${1#*=}" ;;
    --config=*) CONFIG="${1#*=}" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
require CONFIG "$CONFIG" --config
require WORKDIR "$WORKDIR" --workdir
(( DEVICES % PROCESSES == 0 )) || \
  die "--devices=$DEVICES is not divisible by --processes=$PROCESSES"
LOCAL=$(( DEVICES / PROCESSES ))

main=(env JAX_PLATFORMS=cpu
      "XLA_FLAGS=--xla_force_host_platform_device_count=$LOCAL"
      "$PYTHON" -m experiments.main "--config=$CONFIG" "--workdir=$WORKDIR" "$@")

if (( PROCESSES == 1 )); then
  run "${main[@]}"
  exit 0
fi

pids=()
for (( i = 0; i < PROCESSES; i++ )); do
  cmd=("${main[@]}" "--config.distributed.coordinator_address=localhost:$PORT"
       "--config.distributed.num_processes=$PROCESSES"
       "--config.distributed.process_id=$i")
  if (( DRY_RUN )); then
    quote "${cmd[@]}"
  else
    "${cmd[@]}" &
    pids+=($!)
  fi
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
exit "$status"
