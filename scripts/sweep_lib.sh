# shellcheck shell=bash
# The one definition of a cnntrain sweep, sourced by sweep.sh (runs in parallel on this
# machine) and sweep_slurm.sh (a Slurm job array): the arguments, the grid and its order, the
# run folder names, and how one combination is run, resumed or skipped. Both scripts go through
# sweep_combination and sweep_run_one, which is what makes Slurm task #i train exactly the run
# that the local sweep calls #i, in the same folder.
#
# A sourcing script sets SWEEP_PROG and defines usage() before calling sweep_parse_args; it
# may define sweep_script_option FLAG NEXT... (return 0 when it takes the flag; it sets
# SWEEP_OPTION_ARGS=2 when it took NEXT as the flag's value) for flags of its own.
#
# Written into each run folder SWEEP_DIR/NAME, next to what `cnntrain fit` writes there:
#   overrides.txt       the run's --set overrides, one per line (swept ones first)
#   sweep-status.json   the last attempt: exit_code, error (last stderr line), action, seconds
#   sweep-output.log    stdout and stderr of every attempt
# and SWEEP_DIR/sweep.log collects the start/end lines of every run, timestamped.
# cnntrain owns the run folder's layout and rules (cnntrain/runs/runfolder_layout.py, these
# names included): the sweep asks `cnntrain runinfo` (sweep_ask) for a folder's state and its
# files' paths instead of keeping a copy of them.

SWEEP_CONFIG=""
SWEEP_DIR=""
SWEEP_JOBS=""
SWEEP_LIST=0
SWEEP_KEYS=()   # the swept SECTION.KEYs, in the order given
SWEEP_AXES=()   # for each swept key, its values joined by commas (commas cannot occur in them)
SWEEP_FIXED=()  # SECTION.KEY=VALUE given with --set
CNNTRAIN_CMD=()
SWEEP_RUN_NAME=""
SWEEP_RUN_OVERRIDES=()
SWEEP_INFO=()  # the answers of the last sweep_ask
# Paths in the run folder last given to sweep_state:
SWEEP_RUN_LAST=""            # its checkpoints/last.npz
SWEEP_RUN_OVERRIDES_FILE=""  # overrides.txt
SWEEP_RUN_STATUS_FILE=""     # sweep-status.json
SWEEP_RUN_OUTPUT_FILE=""     # sweep-output.log
SWEEP_RUN_STATE=""           # runinfo's state of the folder last given to sweep_status_code

sweep_die() {  # EXIT_CODE MESSAGE
    printf '%s: %s\n' "$SWEEP_PROG" "$2" >&2
    exit "$1"
}

sweep_usage_error() {  # MESSAGE
    printf '%s: %s\n\n' "$SWEEP_PROG" "$1" >&2
    usage >&2
    exit 2
}

sweep_trim() {  # TEXT -> REPLY without surrounding whitespace
    REPLY=$1
    REPLY=${REPLY#"${REPLY%%[![:space:]]*}"}
    REPLY=${REPLY%"${REPLY##*[![:space:]]}"}
}

sweep_check_key() {  # KEY ARG
    if [[ ! $1 =~ ^[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$ ]]; then
        sweep_usage_error "$2: expected SECTION.KEY=VALUE..., e.g. train.lr=0.01,0.1"
    fi
    local other
    for other in "${SWEEP_KEYS[@]}" "${SWEEP_FIXED[@]%%=*}"; do
        if [[ $other == "$1" ]]; then
            sweep_usage_error "$1 is given twice; give all its values in one $1=V1,V2,..."
        fi
    done
}

sweep_add_axis() {  # SECTION.KEY=V1,V2,...
    local arg=$1 key values rest part list=() seen
    if [[ $arg != *=* ]]; then
        sweep_usage_error "$arg: expected SECTION.KEY=V1,V2,..., e.g. train.lr=0.01,0.1"
    fi
    sweep_trim "${arg%%=*}"
    key=$REPLY
    sweep_check_key "$key" "$arg"
    values=${arg#*=}
    if [[ $values == *[[:cntrl:]]* ]]; then
        sweep_usage_error "$key: values cannot contain control characters such as line breaks"
    fi
    rest=$values,
    while [[ -n $rest ]]; do
        part=${rest%%,*}
        rest=${rest#*,}
        sweep_trim "$part"
        if [[ -z $REPLY ]]; then
            sweep_usage_error "$arg: an empty value; separate values by single commas"
        fi
        for seen in "${list[@]}"; do
            if [[ $seen == "$REPLY" ]]; then
                sweep_usage_error "$arg: the value '$REPLY' is given twice"
            fi
        done
        list+=("$REPLY")
    done
    SWEEP_KEYS+=("$key")
    SWEEP_AXES+=("$(IFS=,; printf '%s' "${list[*]}")")
}

sweep_add_fixed() {  # SECTION.KEY=VALUE (the value may contain commas, or be empty)
    local arg=$1 key
    if [[ $arg != *=* ]]; then
        sweep_usage_error "--set $arg: expected SECTION.KEY=VALUE, e.g. --set train.epochs=1"
    fi
    sweep_trim "${arg%%=*}"
    key=$REPLY
    sweep_check_key "$key" "--set $arg"
    if [[ $arg == *[[:cntrl:]]* ]]; then
        sweep_usage_error "--set $key: the value cannot contain control characters"
    fi
    sweep_trim "${arg#*=}"
    SWEEP_FIXED+=("$key=$REPLY")
}

sweep_parse_args() {  # "$@" of the script
    local arg positional=()
    while (($#)); do
        arg=$1
        shift
        case $arg in
            -h | --help) usage; exit 0 ;;
            -j | --jobs | -o | --out | -s | --set)
                (($#)) || sweep_usage_error "$arg needs a value"
                case $arg in
                    -j | --jobs) SWEEP_JOBS=$1 ;;
                    -o | --out) SWEEP_DIR=$1 ;;
                    *) positional+=("--set=$1") ;;
                esac
                shift ;;
            -j?*) SWEEP_JOBS=${arg#-j} ;;
            --jobs=*) SWEEP_JOBS=${arg#*=} ;;
            --out=*) SWEEP_DIR=${arg#*=} ;;
            --set=*) positional+=("$arg") ;;
            --list)
                # shellcheck disable=SC2034  # read by the sourcing script
                SWEEP_LIST=1 ;;
            --) positional+=("$@"); break ;;
            -?*)
                SWEEP_OPTION_ARGS=1
                if ! { declare -F sweep_script_option >/dev/null && sweep_script_option "$arg" "$@"; }; then
                    sweep_usage_error "unknown option $arg"
                fi
                if ((SWEEP_OPTION_ARGS == 2)); then
                    shift
                fi ;;
            *) positional+=("$arg") ;;
        esac
    done
    for arg in "${positional[@]}"; do
        if [[ $arg != --set=* ]]; then
            SWEEP_CONFIG=$arg
            break
        fi
    done
    if [[ -z $SWEEP_CONFIG ]]; then
        sweep_usage_error "give a config file and at least one KEY=V1,V2,..."
    fi
    if [[ ! -f $SWEEP_CONFIG ]]; then
        if [[ $SWEEP_CONFIG == *=* ]]; then
            sweep_usage_error "the first argument must be the config file, not $SWEEP_CONFIG"
        fi
        sweep_usage_error "$SWEEP_CONFIG: no such config file"
    fi
    # --set is taken in order with the axes so that a key given twice is caught either way.
    local config_seen=0
    for arg in "${positional[@]}"; do
        if [[ $arg == --set=* ]]; then
            sweep_add_fixed "${arg#--set=}"
        elif ((config_seen)); then
            sweep_add_axis "$arg"
        else
            config_seen=1
        fi
    done
    if ((${#SWEEP_KEYS[@]} == 0)); then
        sweep_usage_error "give at least one KEY=V1,V2,... to sweep, e.g. train.lr=0.01,0.1"
    fi
    if [[ -n $SWEEP_JOBS && ! $SWEEP_JOBS =~ ^[1-9][0-9]*$ ]]; then
        sweep_usage_error "-j $SWEEP_JOBS: expected a positive whole number of jobs"
    fi
    while [[ $SWEEP_DIR == ?*/ ]]; do
        SWEEP_DIR=${SWEEP_DIR%/}
    done
    if [[ -z $SWEEP_DIR ]]; then
        # Deterministic, so that running the same command again finds the same folder.
        local stem=${SWEEP_CONFIG##*/} i
        SWEEP_DIR=sweeps/${stem%.*}
        for ((i = 0; i < ${#SWEEP_KEYS[@]}; i++)); do
            sweep_label "$i"
            SWEEP_DIR+=-$REPLY
        done
    fi
}

sweep_find_cnntrain() {
    # Split on whitespace so that CNNTRAIN="python -m cnntrain" works; a path holding spaces
    # cannot be given this way (put cnntrain on PATH instead).
    read -r -a CNNTRAIN_CMD <<<"${CNNTRAIN:-cnntrain}"
    if ((${#CNNTRAIN_CMD[@]} == 0)); then
        sweep_die 2 "CNNTRAIN is set but empty; unset it or set it to e.g. \"python -m cnntrain\""
    fi
    if ! command -v "${CNNTRAIN_CMD[0]}" >/dev/null 2>&1; then
        sweep_die 2 "cannot find '${CNNTRAIN_CMD[0]}': install cnntrain (pip install .) or set CNNTRAIN, e.g. CNNTRAIN=\"python3 -m cnntrain\""
    fi
}

sweep_pin_threads() {  # THREADS_PER_RUN
    # One BLAS or OpenMP pool per run, each sized to the run's share of the cores: without
    # this every run starts one thread per core and the runs slow each other down.
    local var
    for var in OMP_NUM_THREADS OPENBLAS_NUM_THREADS MKL_NUM_THREADS BLIS_NUM_THREADS \
        VECLIB_MAXIMUM_THREADS NUMEXPR_NUM_THREADS; do
        export "$var=$1"
    done
}

# --- the grid -----------------------------------------------------------------------------

sweep_count() {  # -> REPLY: the number of combinations
    local axis commas
    REPLY=1
    for axis in "${SWEEP_AXES[@]}"; do
        commas=${axis//[!,]/}
        REPLY=$((REPLY * (${#commas} + 1)))
    done
}

sweep_label() {  # AXIS_INDEX -> REPLY: the key as written in folder names
    local key=${SWEEP_KEYS[$1]} other
    REPLY=${key#*.}
    for other in "${SWEEP_KEYS[@]}"; do
        if [[ $other != "$key" && ${other#*.} == "$REPLY" ]]; then
            REPLY=$key
            return 0
        fi
    done
}

sweep_encode() {  # VALUE -> REPLY, safe in a file name and never containing '_'
    # '_' joins the parts of a name, so it is escaped in values; escaping it, '%' and
    # everything outside [A-Za-z0-9.+-] byte by byte keeps distinct values distinct.
    local LC_ALL=C value=$1 c i
    REPLY=""
    for ((i = 0; i < ${#value}; i++)); do
        c=${value:i:1}
        case $c in
            [A-Za-z0-9.+-]) REPLY+=$c ;;
            *) printf -v c '%%%02X' "'$c"; REPLY+=$c ;;
        esac
    done
}

sweep_combination() {  # INDEX -> SWEEP_RUN_NAME, SWEEP_RUN_OVERRIDES
    # Mixed radix with the last axis changing fastest, as nested loops in the order given.
    local rest=$1 i n values=() picks=() name=""
    for ((i = ${#SWEEP_AXES[@]} - 1; i >= 0; i--)); do
        IFS=, read -r -a values <<<"${SWEEP_AXES[i]}"
        n=${#values[@]}
        picks[i]=${values[rest % n]}
        rest=$((rest / n))
    done
    SWEEP_RUN_OVERRIDES=()
    for ((i = 0; i < ${#SWEEP_AXES[@]}; i++)); do
        SWEEP_RUN_OVERRIDES+=("${SWEEP_KEYS[i]}=${picks[i]}")
        sweep_label "$i"
        name+=${name:+_}$REPLY-
        sweep_encode "${picks[i]}"
        name+=$REPLY
    done
    SWEEP_RUN_OVERRIDES+=("${SWEEP_FIXED[@]}")
    if ((${#name} > 240)); then
        sweep_die 2 "the run folder name ${name:0:60}... would be too long; pass the overrides that do not vary with --set"
    fi
    SWEEP_RUN_NAME=$name
}

sweep_check_index() {  # INDEX
    sweep_count
    if [[ ! $1 =~ ^[0-9]+$ ]] || (($1 >= REPLY)); then
        sweep_die 2 "combination #$1 does not exist: this grid has $REPLY, numbered 0 to $((REPLY - 1))"
    fi
}

sweep_list() {  # print index, folder and overrides of every combination
    local i
    sweep_count
    local total=$REPLY
    for ((i = 0; i < total; i++)); do
        sweep_combination "$i"
        printf '%s\t%s\t%s\n' "$i" "$SWEEP_DIR/$SWEEP_RUN_NAME" "${SWEEP_RUN_OVERRIDES[*]}"
    done
}

# --- run folders ----------------------------------------------------------------------------

sweep_ask() {  # RUN_DIR FIELD... -> SWEEP_INFO: `cnntrain runinfo`'s answers, one per FIELD
    local answers
    ((${#CNNTRAIN_CMD[@]})) || sweep_find_cnntrain
    answers=$("${CNNTRAIN_CMD[@]}" runinfo "$@" </dev/null) ||
        sweep_die 2 "'${CNNTRAIN_CMD[*]} runinfo' could not answer about $1 (see above)"
    mapfile -t SWEEP_INFO <<<"$answers"
}

sweep_state() {  # RUN_DIR -> REPLY: done | resume | restart | fresh | foreign, and SWEEP_RUN_* paths
    sweep_ask "$1" state last overrides sweep_status sweep_output
    SWEEP_RUN_LAST=${SWEEP_INFO[1]}
    SWEEP_RUN_OVERRIDES_FILE=${SWEEP_INFO[2]}
    SWEEP_RUN_STATUS_FILE=${SWEEP_INFO[3]}
    SWEEP_RUN_OUTPUT_FILE=${SWEEP_INFO[4]}
    case ${SWEEP_INFO[0]} in
        finished) REPLY="done" ;;
        resumable) REPLY=resume ;;
        # cnntrain's marker without a checkpoint: a fit died before its first epoch. fit
        # starts such a folder again by itself, and refuses (saying why) one that still holds
        # results, e.g. a best.npz whose last.npz was deleted: no --overwrite here.
        leftovers) REPLY=restart ;;
        empty) REPLY=fresh ;;
        # Files cnntrain did not write: fit refuses the folder and says what it holds.
        foreign) REPLY=foreign ;;
        *) sweep_die 2 "cnntrain runinfo says $1 is '${SWEEP_INFO[0]}', a state this script does not know; update scripts/ with cnntrain" ;;
    esac
}

sweep_temporary() {  # PATH -> the hidden temporary name it is written under first
    printf '%s/.%s.tmp' "${1%/*}" "${1##*/}"
}

sweep_prepare_run() {  # make the current combination's folder and record its overrides
    # -> REPLY: the folder's state, as sweep_state
    local dir=$SWEEP_DIR/$SWEEP_RUN_NAME want have tmp
    want=$(printf '%s\n' "${SWEEP_RUN_OVERRIDES[@]}")
    mkdir -p "$dir"
    sweep_state "$dir"
    if [[ -f $SWEEP_RUN_OVERRIDES_FILE ]]; then
        have=$(<"$SWEEP_RUN_OVERRIDES_FILE")
        if [[ $have != "$want" ]]; then
            # Same folder name, other fixed overrides: skipping or resuming it would pass off
            # a different run as this one.
            sweep_die 2 "$dir holds a run with other overrides (${have//$'\n'/ }); choose another -o SWEEP_DIR or remove that folder"
        fi
        return 0
    fi
    if [[ $REPLY != fresh ]]; then
        sweep_die 2 "$dir holds a run this sweep did not start; choose another -o SWEEP_DIR or remove that folder"
    fi
    tmp=$(sweep_temporary "$SWEEP_RUN_OVERRIDES_FILE")
    printf '%s\n' "$want" >"$tmp"
    mv -f "$tmp" "$SWEEP_RUN_OVERRIDES_FILE"
}

sweep_say() {  # LINE: to stdout and, timestamped, to SWEEP_DIR/sweep.log
    printf '%s\n' "$1"
    printf '%s %s\n' "$(date '+%Y-%m-%d %H:%M:%S')" "$1" >>"$SWEEP_DIR/sweep.log"
}

sweep_json_string() {  # TEXT -> REPLY as a JSON string
    local s=$1
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//$'\t'/\\t}
    REPLY="\"${s//[[:cntrl:]]/}\""
}

sweep_write_status() {  # STATUS_FILE EXIT_CODE ERROR ACTION SECONDS
    # SWEEP_REQUEUES (set by a Slurm task): how many times Slurm has requeued the run's task.
    local error requeues="" tmp
    sweep_json_string "$3"
    error=$REPLY
    if [[ -n ${SWEEP_REQUEUES:-} ]]; then
        requeues=$(printf ',\n  "requeues": %d' "$SWEEP_REQUEUES")
    fi
    tmp=$(sweep_temporary "$1")
    printf '{\n  "exit_code": %d,\n  "error": %s,\n  "action": "%s",\n  "seconds": %d,\n  "finished": "%s"%s\n}\n' \
        "$2" "$error" "$4" "$5" "$(date -u '+%Y-%m-%dT%H:%M:%SZ')" "$requeues" >"$tmp"
    mv -f "$tmp" "$1"
}

sweep_stopped_code() {  # EXIT_CODE: true for cnntrain's exit after a stop signal
    # 130 SIGINT (Ctrl-C, the sweeps' own stop), 143 SIGTERM (Slurm's time limit, scancel),
    # 129 SIGHUP: the run saved its exact position; cnntrain.apps.summarize reads them alike.
    [[ $1 == 130 || $1 == 143 || $1 == 129 ]]
}

sweep_signal_name() {  # EXIT_CODE of a stop -> the signal's name on stdout
    case $1 in
        129) printf 'SIGHUP' ;;
        130) printf 'SIGINT' ;;
        *) printf 'SIGTERM' ;;
    esac
}

sweep_status_code() {  # RUN_DIR -> REPLY: the exit code of the last attempt, or "" if none;
    # SWEEP_RUN_STATE: the folder's state as cnntrain runinfo names it (finished, ...)
    sweep_ask "$1" exit_code state
    REPLY=${SWEEP_INFO[0]}
    # shellcheck disable=SC2034  # read by the sourcing script
    SWEEP_RUN_STATE=${SWEEP_INFO[1]}
}

sweep_fetch_mnist() {
    # Once, before the runs start: parallel runs would otherwise all wait on one download,
    # and a machine that cannot reach any mirror fails here instead of in every run.
    local rc=0
    "${CNNTRAIN_CMD[@]}" download --config "$SWEEP_CONFIG" --quiet </dev/null || rc=$?
    if ((rc != 0)); then
        sweep_die "$rc" "could not get MNIST (see above); no run was started"
    fi
}

sweep_run_one() {  # INDEX: train, resume or skip combination #INDEX; returns fit's exit code
    local index=$1 dir action rc=0 started reason tag override args=()
    sweep_combination "$index"
    sweep_prepare_run
    action=$REPLY
    dir=$SWEEP_DIR/$SWEEP_RUN_NAME
    tag="#$index $SWEEP_RUN_NAME"
    case $action in
        done)
            sweep_say "skip    $tag: already done"
            return 0 ;;
        resume)
            # The checkpoint holds the resolved config, overrides included.
            args=(fit --resume "$SWEEP_RUN_LAST" --quiet) ;;
        *)
            args=(fit --config "$SWEEP_CONFIG")
            for override in "${SWEEP_RUN_OVERRIDES[@]}"; do
                args+=(--set "$override")
            done
            args+=(--out "$dir" --quiet) ;;
    esac
    rm -f "$SWEEP_RUN_STATUS_FILE"
    if [[ $action == resume ]]; then
        sweep_say "resume  $tag from ${SWEEP_RUN_LAST#"$dir"/}"
    else
        sweep_say "start   $tag"
    fi
    printf '== %s %s: %s\n' "$(date '+%Y-%m-%d %H:%M:%S')" "$action" \
        "${CNNTRAIN_CMD[*]} ${args[*]}" >>"$SWEEP_RUN_OUTPUT_FILE"
    started=$(date +%s)
    "${CNNTRAIN_CMD[@]}" "${args[@]}" </dev/null >>"$SWEEP_RUN_OUTPUT_FILE" \
        2>"$dir/.sweep-stderr" || rc=$?
    reason=$(awk 'NF { last = $0 } END { print last }' "$dir/.sweep-stderr")
    cat "$dir/.sweep-stderr" >>"$SWEEP_RUN_OUTPUT_FILE"
    rm -f "$dir/.sweep-stderr"
    if ((rc > 128)) && [[ -z $reason ]]; then
        reason="killed by signal $((rc - 128))"
    elif ((rc != 0)) && [[ -z $reason ]]; then
        reason="exit code $rc"
    fi
    sweep_write_status "$SWEEP_RUN_STATUS_FILE" "$rc" "$reason" "$action" "$(($(date +%s) - started))"
    if ((rc == 0)); then
        sweep_say "done    $tag ($(($(date +%s) - started))s)"
    elif sweep_stopped_code "$rc"; then
        sweep_say "stopped $tag by $(sweep_signal_name "$rc"); run the sweep again to resume it"
    else
        sweep_say "FAILED  $tag (exit $rc): $reason"
    fi
    return "$rc"
}
