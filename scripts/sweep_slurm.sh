#!/usr/bin/env bash
#SBATCH --job-name=cnntrain-sweep
#SBATCH --cpus-per-task=1
#SBATCH --mem=4G
#SBATCH --time=04:00:00
#SBATCH --output=slurm-%A_%a.out
#SBATCH --signal=B:INT@120
#SBATCH --requeue
# The sweep of sweep.sh as a Slurm job array. Run on the login node it submits itself with
# sbatch --array=...; as array task #SLURM_ARRAY_TASK_ID it trains exactly combination #ID of
# the same grid into the same folder layout, through the functions sweep.sh uses.
#
# The #SBATCH lines above are defaults: edit them, or override them without editing through
# sbatch's input variables (SBATCH_PARTITION, SBATCH_TIMELIMIT, SBATCH_ACCOUNT, ...).
# --signal asks Slurm for a SIGINT two minutes before the time limit; it is passed on to the
# run, which saves its exact position, so submitting again resumes instead of restarting. The
# time limit itself (and scancel) sends SIGTERM to the run directly, which saves it the same way.
# After the early signal the task requeues itself (at most --max-requeues times), so a sweep
# longer than the time limit finishes unattended.
set -euo pipefail

SWEEP_PROG=sweep_slurm.sh

usage() {
    cat <<'EOF'
usage: scripts/sweep_slurm.sh CONFIG KEY=V1,V2,... [KEY=...]... [--set KEY=V]...
                              [-j MAX] [-o SWEEP_DIR] [--max-requeues N] [--print]
       scripts/sweep_slurm.sh CONFIG KEY=V1,V2,... ... --list

Submit the grid that scripts/sweep.sh would run as one Slurm job array, one task per
combination, writing into the same SWEEP_DIR layout, so `cnntrain summarize SWEEP_DIR`
reads it. The arguments mean what they mean for scripts/sweep.sh:

  CONFIG             the INI config every run starts from
  KEY=V1,V2,...      a swept override (SECTION.KEY, comma-separated values)
  -s, --set KEY=V    a fixed override for every run, left out of the folder names
  -j, --jobs MAX     at most MAX tasks at once (--array=...%MAX; default: no limit)
  -o, --out DIR      the sweep folder (default: sweeps/CONFIGNAME-KEY-KEY...), on a file
                     system the compute nodes share
  --max-requeues N   after the early signal before its time limit, a task saves its run's
                     position and requeues itself, at most N times (default 3; 0: never),
                     and the requeued task goes on from there
  --print            print the sbatch command instead of submitting it
  --list             print each combination (index, run folder, overrides) and run nothing
  -h, --help         show this text

Submitting fetches MNIST once on this node, makes the run folders and submits only the
combinations not yet done: submitting the same command again resumes unfinished runs from
their last checkpoint and retries failed ones. Each task reads its combination from
SLURM_ARRAY_TASK_ID (combination #ID of `--list`), runs it with its BLAS/OpenMP threads pinned
to SLURM_CPUS_PER_TASK, records it in its run folder and exits with cnntrain's exit status.
A task stopped by its time limit, scancel or the early --signal saves its exact position and
ends as "stopped" (exit 143 or 130); submitting again resumes it. After the early signal it
first requeues itself while it has requeues left; a task requeued by Slurm (preemption, a
failed node) also goes on from its run's last checkpoint.
Task output goes to SWEEP_DIR/slurm-JOBID_TASKID.out.

Environment: CNNTRAIN (the cnntrain command, default: cnntrain), CNNTRAIN_DATA_DIR,
CNNTRAIN_MNIST_MIRRORS and SBATCH_* reach sbatch and the tasks.

Example:
  scripts/sweep_slurm.sh configs/lenet5.ini train.lr=0.01,0.05,0.1 train.batch_size=32,64 -j 4
  cnntrain summarize sweeps/lenet5-lr-batch_size
EOF
}

# Slurm runs a copy of this script from its spool folder, so the submitter tells the tasks
# where the library is.
here=${CNNTRAIN_SWEEP_SCRIPTS:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}
if [[ ! -f $here/sweep_lib.sh && -f ${SLURM_SUBMIT_DIR:-.}/scripts/sweep_lib.sh ]]; then
    here=$SLURM_SUBMIT_DIR/scripts
fi
# shellcheck source-path=SCRIPTDIR source=sweep_lib.sh
source "$here/sweep_lib.sh"

print_only=0
max_requeues=3
sweep_script_option() {  # FLAG NEXT...
    case $1 in
        --print | --dry-run) print_only=1 ;;
        --max-requeues)
            (($# > 1)) || sweep_usage_error "--max-requeues needs a value"
            max_requeues=$2
            SWEEP_OPTION_ARGS=2 ;;
        --max-requeues=*) max_requeues=${1#*=} ;;
        *) return 1 ;;
    esac
    if [[ ! $max_requeues =~ ^[0-9]+$ ]]; then
        sweep_usage_error "--max-requeues $max_requeues: expected a whole number (0: never requeue)"
    fi
}

array_spec() {  # INDEX... (ascending) -> REPLY, e.g. 0 1 2 5 -> 0-2,5
    local i start="" prev=""
    REPLY=""
    for i in "$@" ""; do
        if [[ -n $prev && $i == $((prev + 1)) ]]; then
            prev=$i
            continue
        fi
        if [[ -n $start ]]; then
            REPLY+=${REPLY:+,}$start
            if ((prev != start)); then
                REPLY+=-$prev
            fi
        fi
        start=$i
        prev=$i
    done
}

signal_below() {  # SIGNAL PID: send SIGNAL to every process descended from PID
    local sig=$1 stat pid ppid parents=() found=("$2") i
    # Parent links from /proc (the command name, in parentheses, may hold spaces).
    for stat in /proc/[0-9]*/stat; do
        read -r stat <"$stat" 2>/dev/null || continue
        pid=${stat%% *}
        stat=${stat##*) }
        ppid=${stat#* }
        parents[pid]=${ppid%% *}
    done
    for ((i = 0; i < ${#found[@]}; i++)); do
        for pid in "${!parents[@]}"; do
            if [[ ${parents[pid]} == "${found[i]}" ]]; then
                found+=("$pid")
            fi
        done
    done
    kill "-$sig" "${found[@]:1}" 2>/dev/null || true
}

run_task() {  # INDEX
    sweep_find_cnntrain
    sweep_check_index "$1"
    sweep_pin_threads "${SLURM_CPUS_PER_TASK:-1}"
    mkdir -p "$SWEEP_DIR"
    # Slurm counts the times it has requeued this task; the run's status records it.
    export SWEEP_REQUEUES=${SLURM_RESTART_COUNT:-0}
    # How the run learns that it must stop, saving its exact position:
    # - at the time limit, on scancel and on preemption Slurm sends SIGTERM to every process of
    #   the job, the run included (it stays in this shell's process group, which every
    #   ProctrackType follows), and SIGKILL KillWait seconds later. This shell and the one that
    #   records the run only wait for it: passing the signal on would be a second one, which
    #   makes cnntrain stop at once instead of saving.
    # - the early warning of --signal=B:INT reaches this shell alone, so it is passed on to the
    #   run. The shells only note signals (a trap waits for the running command), so that they
    #   live to record how the run ended; the run itself gets the default handlers back.
    warned=0
    trap : TERM HUP
    (
        trap : INT TERM HUP
        sweep_run_one "$1"
    ) &
    local task=$! rc=0
    if [[ -n ${SLURM_JOB_ID:-} ]]; then
        # shellcheck disable=SC2064  # the pid is fixed now
        trap "warned=1; signal_below INT $task" INT
    else
        trap : INT  # a task run by hand at a terminal: its Ctrl-C reaches the run by itself
    fi
    while kill -0 "$task" 2>/dev/null; do
        wait "$task" || true
    done
    wait "$task" || rc=$?
    if ((rc == 130 && warned && max_requeues > 0)); then
        requeue_after_warning "$1"
    fi
    exit "$rc"
}

requeue_after_warning() {  # INDEX: the run saved its position at the early signal
    local tag task_id=${SLURM_ARRAY_JOB_ID:-}_${SLURM_ARRAY_TASK_ID:-} dir last status
    sweep_combination "$1"
    tag="#$1 $SWEEP_RUN_NAME"
    dir=$SWEEP_DIR/$SWEEP_RUN_NAME
    sweep_ask "$dir" last sweep_status
    last=${SWEEP_INFO[0]#"$dir"/}
    status=${SWEEP_INFO[1]}
    if ((SWEEP_REQUEUES >= max_requeues)); then
        sweep_say "stopped $tag after $SWEEP_REQUEUES requeues (--max-requeues $max_requeues); submit the sweep again to resume it"
        sweep_note_status "$status" "used its $SWEEP_REQUEUES of $max_requeues requeues (--max-requeues); submit the sweep again to resume it"
        return 0
    fi
    if scontrol requeue "$task_id"; then
        sweep_say "requeue $tag ($((SWEEP_REQUEUES + 1)) of $max_requeues): the requeued task goes on from $last"
    else
        sweep_say "stopped $tag: scontrol requeue $task_id failed; submit the sweep again to resume it"
    fi
}

sweep_note_status() {  # STATUS_FILE NOTE: add "note": NOTE to the run's sweep-status.json
    local lines=() last tmp
    sweep_json_string "$2"
    mapfile -t lines <"$1"
    last=$((${#lines[@]} - 2))  # the last field; the final line is the closing brace
    lines[last]+=,
    lines[last + 1]="  \"note\": $REPLY"
    tmp=$(sweep_temporary "$1")
    printf '%s\n' "${lines[@]}" "}" >"$tmp"
    mv -f "$tmp" "$1"
}

submit() {
    local abs_dir abs_config i pending=() spec cmd=() k
    sweep_count
    local total=$REPLY
    case $SWEEP_DIR in /*) abs_dir=$SWEEP_DIR ;; *) abs_dir=$PWD/$SWEEP_DIR ;; esac
    case $SWEEP_CONFIG in /*) abs_config=$SWEEP_CONFIG ;; *) abs_config=$PWD/$SWEEP_CONFIG ;; esac
    if [[ $here == *,* ]]; then
        sweep_die 2 "$here: sbatch --export cannot carry a path with a comma; move the scripts"
    fi
    if ((print_only == 0)); then
        command -v sbatch >/dev/null 2>&1 ||
            sweep_die 1 "sbatch is not on PATH (not a Slurm login node?); --print shows the command"
        sweep_find_cnntrain
    fi
    for ((i = 0; i < total; i++)); do
        sweep_combination "$i"
        if ((print_only == 0)); then
            sweep_prepare_run
        fi
        sweep_state "$SWEEP_DIR/$SWEEP_RUN_NAME"
        if [[ $REPLY != "done" ]]; then
            pending+=("$i")
        fi
    done
    if ((${#pending[@]} == 0)); then
        printf 'all %s runs in %s are done; nothing to submit\n' "$total" "$SWEEP_DIR"
        printf 'summarize: %s summarize %q\n' "${CNNTRAIN:-cnntrain}" "$SWEEP_DIR"
        return 0
    fi
    array_spec "${pending[@]}"
    spec=$REPLY${SWEEP_JOBS:+%$SWEEP_JOBS}
    cmd=(sbatch "--array=$spec" "--output=$abs_dir/slurm-%A_%a.out"
        "--export=ALL,CNNTRAIN_SWEEP_SCRIPTS=$here" "$here/sweep_slurm.sh" "$abs_config")
    for ((k = 0; k < ${#SWEEP_KEYS[@]}; k++)); do
        cmd+=("${SWEEP_KEYS[k]}=${SWEEP_AXES[k]}")
    done
    for k in "${SWEEP_FIXED[@]}"; do
        cmd+=(--set "$k")
    done
    cmd+=(-o "$abs_dir")
    if ((max_requeues != 3)); then
        cmd+=(--max-requeues "$max_requeues")
    fi
    if ((print_only)); then
        local word line=""
        for word in "${cmd[@]}"; do
            # Quoted only where the shell needs it, so the line stays readable and pastable.
            if [[ ! $word =~ ^[A-Za-z0-9_./=%,:+@-]+$ ]]; then
                word="'${word//\'/\'\\\'\'}'"
            fi
            line+=${line:+ }$word
        done
        printf '%s\n' "$line"
        return 0
    fi
    sweep_say "sweep: $total runs of $SWEEP_CONFIG in $SWEEP_DIR, submitting the ${#pending[@]} not done as array $spec"
    sweep_fetch_mnist
    "${cmd[@]}"
    printf 'results:   %s (task output in slurm-JOBID_TASKID.out, run output in RUN/sweep-output.log)\n' "$SWEEP_DIR"
    printf 'summarize: %s summarize %q\n' "${CNNTRAIN:-cnntrain}" "$SWEEP_DIR"
}

sweep_parse_args "$@"
if ((SWEEP_LIST)); then
    sweep_list
elif ((print_only == 0)) && [[ -n ${SLURM_ARRAY_TASK_ID:-} ]]; then
    run_task "$SLURM_ARRAY_TASK_ID"
else
    submit
fi
