#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, to try the Slurm path of cnntrain (and to test it in
# CI) without a real cluster: munged, slurmctld and slurmd started from a private folder, with
# their own munge key, config, state, spool and logs, on free local ports. Nothing outside that
# folder is written, and `down` stops exactly the daemons `up` started.
set -euo pipefail

PROG=slurm_local.sh

usage() {
    cat <<'EOF'
usage: scripts/slurm_local.sh up [DIR]      start munged, slurmctld and slurmd; wait for the node
       scripts/slurm_local.sh down [DIR]    stop the daemons `up` started there, remove DIR
       scripts/slurm_local.sh env [DIR]     print the export line the Slurm commands need

A one-node Slurm cluster on this machine: the controller (slurmctld) and the compute daemon
(slurmd) on the local host, authenticated by a munged of their own with a fresh key. Its
config, state, spool, logs and PID files live in DIR (default: $CNNTRAIN_SLURM_DIR, else
${TMPDIR:-/tmp}/cnntrain-slurm); the node gets the CPUs of `nproc` and most of the memory.
Start it as root (sudo, or a container): slurmd starts each job as the user who submitted it.

Needs Debian's slurm-wlm and munge (apt-get install slurm-wlm munge) or the same daemons from
another Slurm (tested with Slurm 22.05). The Slurm commands (sbatch, squeue, scancel, sinfo)
find this cluster through SLURM_CONF, which `up` and `env` print:

  eval "$(scripts/slurm_local.sh up)"
  sbatch --wrap 'hostname'; squeue
  scripts/slurm_local.sh down
EOF
}

die() {  # MESSAGE
    printf '%s: %s\n' "$PROG" "$1" >&2
    exit 1
}

say() {  # LINE: progress goes to stderr, so stdout holds only the export line
    printf '%s: %s\n' "$PROG" "$1" >&2
}

DAEMONS=(munged slurmctld slurmd)

alive() {  # NAME -> 0 when the daemon recorded in DIR/NAME.pid runs, with its pid in REPLY
    local file=$DIR/$1.pid pid
    REPLY=""
    [[ -s $file ]] || return 1
    read -r pid <"$file" || true
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    # The pid must still be the daemon started here, not a process that reused the number.
    [[ -r /proc/$pid/comm && $(<"/proc/$pid/comm") == "$1" ]] || return 1
    # A zombie has stopped already; its parent just has not reaped it yet.
    local stat
    stat=$(<"/proc/$pid/stat") 2>/dev/null || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != Z ]] || return 1
    REPLY=$pid
}

free_port() {  # FIRST -> REPLY: FIRST or the next port nothing on this host listens on
    local port=$1 used=" " file _ local_addr _rem state _rest
    # Listening sockets (state 0A) from /proc, ports in hex, so no ss or netstat is needed.
    for file in /proc/net/tcp /proc/net/tcp6; do
        [[ -r $file ]] || continue
        while read -r _ local_addr _rem state _rest; do
            if [[ $state == 0A ]]; then
                used+="$((16#${local_addr##*:})) "
            fi
        done < <(tail -n +2 "$file")
    done
    while [[ $used == *" $port "* ]]; do
        port=$((port + 1))
    done
    REPLY=$port
}

write_config() {
    local node cpus mem_kb real_mb ctld_port slurmd_port
    node=$(hostname -s 2>/dev/null || hostname)
    cpus=$(nproc)
    mem_kb=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)
    # Leave a tenth and at least 512 MiB to the system: slurmd drains a node whose configured
    # memory exceeds what it finds.
    real_mb=$((mem_kb * 9 / 10 / 1024))
    if ((mem_kb / 1024 - real_mb < 512)); then
        real_mb=$((mem_kb / 1024 - 512))
    fi
    ((real_mb > 0)) || die "this machine has too little memory for a Slurm node"
    free_port 6817
    ctld_port=$REPLY
    free_port $((ctld_port + 1))
    slurmd_port=$REPLY
    cat >"$DIR/slurm.conf" <<EOF
# Written by scripts/slurm_local.sh: a one-node cluster on this host, for trying and testing.
ClusterName=cnntrain-local
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge.socket
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups here (containers, CI machines): processes are tracked through /proc.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
# Seconds from a job's SIGTERM (time limit, scancel) to its SIGKILL: Slurm's default.
KillWait=30
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$real_mb State=UNKNOWN
PartitionName=local Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
}

wait_for() {  # SECONDS COMMAND...: run COMMAND until it succeeds, for at most SECONDS
    local seconds=$1 i
    shift
    for ((i = 0; i < seconds * 5; i++)); do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.2
    done
    return 1
}

node_idle() {
    [[ $(sinfo -h -N -o '%t' 2>/dev/null) == idle ]]
}

show_log() {  # NAME: the end of a daemon's log, when it did not come up
    local file=$DIR/log/$1.log
    if [[ -f $file ]]; then
        printf -- '--- last lines of %s\n' "$file" >&2
        tail -n 15 "$file" >&2
    fi
}

up() {
    local name missing=()
    if (($(id -u) != 0)); then
        die "run it as root (e.g. sudo $0 up): slurmd starts each job as the user who submitted it"
    fi
    for name in munged slurmctld slurmd sinfo; do
        command -v "$name" >/dev/null 2>&1 || missing+=("$name")
    done
    if ((${#missing[@]})); then
        die "${missing[*]} not found: install Slurm and munge (Debian: apt-get install slurm-wlm munge)"
    fi
    for name in "${DAEMONS[@]}"; do
        if alive "$name"; then
            die "$name from $DIR already runs (pid $REPLY); use it (${PROG} env) or stop it first (${PROG} down)"
        fi
    done
    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd)
    rm -rf "${DIR:?}/state" "$DIR/spool"
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/munge"
    # The key stays private; the rest is readable, so that other users' sbatch finds the
    # config and munged's socket (munged refuses folders others may write to).
    chmod 755 "$DIR"
    chmod 700 "$DIR/munge"
    if [[ ! -s $DIR/munge/munge.key ]]; then
        # A key of its own, so this cluster never touches (or needs) /etc/munge.
        (umask 077 && head -c 1024 /dev/urandom >"$DIR/munge/munge.key")
    fi
    write_config
    export SLURM_CONF=$DIR/slurm.conf

    say "starting munged, slurmctld and slurmd in $DIR"
    # --force: munged refuses some folder layouts (e.g. a world-writable /tmp above DIR).
    munged --force --socket="$DIR/munge.socket" --key-file="$DIR/munge/munge.key" \
        --pid-file="$DIR/munged.pid" --log-file="$DIR/log/munged.log" \
        --seed-file="$DIR/munge/munged.seed" ||
        { show_log munged; die "munged did not start"; }
    wait_for 10 alive munged || { show_log munged; die "munged did not start"; }
    slurmctld -c -f "$SLURM_CONF" || { show_log slurmctld; die "slurmctld did not start"; }
    wait_for 30 scontrol ping ||
        { show_log slurmctld; die "slurmctld does not answer (scontrol ping)"; }
    slurmd -f "$SLURM_CONF" || { show_log slurmd; die "slurmd did not start"; }
    if ! wait_for 60 node_idle; then
        sinfo -N -l >&2 || true
        show_log slurmd
        show_log slurmctld
        die "the node did not become idle within 60 s"
    fi
    say "up: $(sinfo -h -N -o '%N %c CPUs %m MB, %t')"
    printf 'export SLURM_CONF=%q\n' "$SLURM_CONF"
}

stop_daemon() {  # NAME: SIGTERM the daemon started here, then wait for it (SIGKILL after 20 s)
    local pid i
    alive "$1" || return 0
    pid=$REPLY
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 100; i++)); do
        alive "$1" || return 0
        sleep 0.2
    done
    say "$1 (pid $pid) ignored SIGTERM for 20 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
}

cluster_busy() {  # true while a job is queued or running, or the node still cleans one up
    [[ -n $(squeue -h -o %i 2>/dev/null) || $(sinfo -h -N -o %t 2>/dev/null) =~ ^(alloc|mix|comp) ]]
}

cancel_jobs() {
    # Jobs still queued or running would leave their slurmstepd and processes behind once
    # slurmd is gone: cancel them and give them Slurm's KillWait to save and exit (the node
    # stays "completing" while processes of a job remain).
    local i
    export SLURM_CONF=$DIR/slurm.conf
    cluster_busy || return 0
    say "cancelling the jobs still queued or running"
    scancel --partition=local 2>/dev/null || true
    for ((i = 0; i < 160; i++)); do
        cluster_busy || return 0
        sleep 0.25
    done
    say "some jobs did not end within 40 s; stopping the daemons anyway"
}

down() {
    local name
    if [[ ! -d $DIR ]]; then
        say "nothing to stop: $DIR does not exist"
        return 0
    fi
    if [[ ! -f $DIR/slurm.conf ]]; then
        die "$DIR holds no slurm.conf: not a folder of $PROG; leaving it alone"
    fi
    if alive slurmctld; then
        cancel_jobs
    fi
    # slurmd first, so it is not left asking a controller that is gone; munged last.
    for name in slurmd slurmctld munged; do
        stop_daemon "$name"
    done
    rm -rf "$DIR"
    say "down: stopped the daemons of $DIR and removed it"
}

command=${1:-}
DIR=${2:-${CNNTRAIN_SLURM_DIR:-${TMPDIR:-/tmp}/cnntrain-slurm}}
case $command in
    up) up ;;
    down) down ;;
    env)
        [[ -f $DIR/slurm.conf ]] || die "no cluster in $DIR: start one with $PROG up"
        printf 'export SLURM_CONF=%q\n' "$(cd "$DIR" && pwd)/slurm.conf" ;;
    -h | --help) usage ;;
    *) usage >&2; exit 2 ;;
esac
