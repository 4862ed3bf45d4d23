#!/usr/bin/env bash
# A hyperparameter sweep on this machine: every combination of the given overrides, several
# runs at a time. The grid, the folder names and the handling of one run live in sweep_lib.sh,
# shared with sweep_slurm.sh.
set -euo pipefail

SWEEP_PROG=sweep.sh

usage() {
    cat <<'EOF'
usage: scripts/sweep.sh CONFIG KEY=V1,V2,... [KEY=...]... [--set KEY=V]...
                        [-j JOBS] [-o SWEEP_DIR]
       scripts/sweep.sh CONFIG KEY=V1,V2,... ... --list

Train every combination of the given overrides of CONFIG (the Cartesian grid), each run in
its own folder SWEEP_DIR/NAME, JOBS runs at a time.

  CONFIG             the INI config every run starts from, e.g. configs/quick.ini
  KEY=V1,V2,...      a swept override; KEY is SECTION.KEY as in `cnntrain fit --set`, the
                     values are separated by commas. A single value (KEY=V) is applied to
                     every run and appears in every folder name.
  -s, --set KEY=V    a fixed override for every run, left out of the folder names
  -j, --jobs JOBS    runs at a time (default: the number of cores); each run's BLAS and
                     OpenMP threads are pinned to cores / JOBS (at least 1)
  -o, --out DIR      the sweep folder (default: sweeps/CONFIGNAME-KEY-KEY...)
  --list             print each combination (index, run folder, overrides) and run nothing
  -h, --help         show this text

A run folder is named after the swept overrides: train.lr=0.1 train.batch_size=32 becomes
lr-0.1_batch_size-32. The section is kept only when two swept keys share a name (data.dir,
run.dir), and any character other than a letter, a digit, '.', '+' or '-' is written %XX.

MNIST is fetched once before the runs start. A failed run is reported and the others go on.
Running the same command again skips the finished runs, resumes unfinished ones from their
last checkpoint and retries failed ones. Ctrl-C stops every run at its next step, keeping its
position for the next attempt. `cnntrain summarize SWEEP_DIR` tabulates the results.

Exit status: 0 every run done, 1 some run failed, 2 bad arguments or config, 130 interrupted.

Environment:
  CNNTRAIN           the cnntrain command, split on spaces (default: cnntrain), e.g.
                     CNNTRAIN="python3 -m cnntrain"
  CNNTRAIN_DATA_DIR, CNNTRAIN_MNIST_MIRRORS and the rest of the environment reach every run.

Example:
  scripts/sweep.sh configs/quick.ini train.lr=0.01,0.05,0.1 train.batch_size=32,64 -j 2
  cnntrain summarize sweeps/quick-lr-batch_size
EOF
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=sweep_lib.sh
source "$here/sweep_lib.sh"

sweep_parse_args "$@"
if ((SWEEP_LIST)); then
    sweep_list
    exit 0
fi
sweep_find_cnntrain
sweep_count
total=$REPLY

# Make every run folder first: a clash with an earlier sweep stops the sweep before any work,
# and `cnntrain summarize` lists the queued runs as not started.
mkdir -p "$SWEEP_DIR"
todo=()
states=()  # each run's state before the sweep starts any (sweep_state's words)
for ((i = 0; i < total; i++)); do
    sweep_combination "$i"
    sweep_prepare_run
    states[i]=$REPLY
    if [[ $REPLY != "done" ]]; then
        todo+=("$i")
    fi
done

cores=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)
jobs_max=${SWEEP_JOBS:-$cores}
running_max=$((jobs_max < ${#todo[@]} ? jobs_max : ${#todo[@]}))
threads=$((running_max > 0 ? cores / running_max : cores))
threads=$((threads > 0 ? threads : 1))
sweep_pin_threads "$threads"

if ((${#todo[@]})); then
    sweep_say "sweep: $total runs of $SWEEP_CONFIG in $SWEEP_DIR, $((total - ${#todo[@]})) already done; $running_max at a time, $threads thread(s) each"
    sweep_fetch_mnist
else
    sweep_say "sweep: all $total runs of $SWEEP_CONFIG in $SWEEP_DIR are done already"
fi

# Each run becomes its own process group, so a Ctrl-C at the terminal reaches this script
# alone, and the trap below passes exactly one SIGINT on to each run: cnntrain's first
# SIGINT stops after the current step and saves the position, a second one would not.
set -m
stopping=0
stop_runs() {
    stopping=1
    local pid
    for pid in $(jobs -rp); do
        kill -INT -- "-$pid" 2>/dev/null || true
    done
}
trap stop_runs INT TERM HUP

for ((i = 0; i < total; i++)); do
    ((stopping == 0)) || break
    if [[ ${states[i]} == "done" ]]; then
        sweep_run_one "$i"  # only says that it is skipped
        continue
    fi
    while (($(jobs -rp | wc -l) >= jobs_max)); do
        wait -n || true  # a failed run is recorded in its folder; the others go on
    done
    ((stopping == 0)) || break
    sweep_run_one "$i" &
done
while [[ -n $(jobs -rp) ]]; do
    wait -n || true
done
wait || true
trap - INT TERM HUP

finished=0
failed=()
unfinished=()
for ((i = 0; i < total; i++)); do
    sweep_combination "$i"
    dir=$SWEEP_DIR/$SWEEP_RUN_NAME
    sweep_status_code "$dir"
    if [[ $SWEEP_RUN_STATE == finished ]]; then
        finished=$((finished + 1))
    elif { [[ -z $REPLY ]] || sweep_stopped_code "$REPLY"; } && ((stopping)); then
        unfinished+=("$SWEEP_RUN_NAME")
    else
        failed+=("$SWEEP_RUN_NAME")
    fi
done

summary="sweep: $finished of $total runs done"
if ((${#failed[@]})); then
    summary+=", ${#failed[@]} failed: ${failed[*]}"
fi
if ((${#unfinished[@]})); then
    summary+=", ${#unfinished[@]} interrupted or not started (run the same command to go on)"
fi
sweep_say "$summary"
printf 'results:   %s (each run'\''s output is in RUN/sweep-output.log)\n' "$SWEEP_DIR"
printf 'summarize: %s summarize %q\n' "${CNNTRAIN:-cnntrain}" "$SWEEP_DIR"
if ((stopping)); then
    exit 130
elif ((${#failed[@]})); then
    exit 1
fi
