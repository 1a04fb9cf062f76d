#!/usr/bin/env bash
# A local Ray head for development, with the job server on 127.0.0.1:8265, so that stages run as
# Ray jobs the way they do on a cluster:
#   infra/local-ray.sh start|stop|status
# Environment (relative paths are from the repo root):
#   PYTHON          the project's Python; Ray is the `ray` next to it  (default .venv/bin/python)
#   RLHF_RAY_STATE  where the head's pid, address and log are kept     (default .ray-local)
#   RLHF_RAY_CPUS   CPUs the head offers                               (default: all cores)
#   RLHF_RAY_PORT   the head's GCS port                                (default 6379)
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "local-ray: $*" >&2; exit 1; }

PYTHON=${PYTHON:-.venv/bin/python}
# A bare name (PYTHON=python3) is looked up on PATH: Ray is then the `ray` in the same directory.
[[ $PYTHON == */* ]] || PYTHON=$(command -v "$PYTHON") || die "no $PYTHON on PATH"
RAY_BIN=$(dirname "$PYTHON")/ray
STATE_DIR=${RLHF_RAY_STATE:-.ray-local}
PID_FILE=$STATE_DIR/head.pid
ADDRESS_FILE=$STATE_DIR/address
LOG_FILE=$STATE_DIR/head.log
GCS_PORT=${RLHF_RAY_PORT:-6379}
DASHBOARD_PORT=8265
JOB_SERVER=http://127.0.0.1:$DASHBOARD_PORT

# The recorded head is running: its pid is alive, leads its own process group (setsid below) and is
# a `ray start --head`, so a pid reused by another program after a reboot is never taken for it.
head_running() {
    [[ -f $PID_FILE ]] || return 1
    local pid
    pid=$(<"$PID_FILE")
    [[ $(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ') == "$pid" ]] || return 1
    [[ $(ps -o args= -p "$pid") == *"start --head"* ]]
}

group_alive() { kill -0 -- "-$1" 2>/dev/null; }

print_hint() {
    echo "  export RAY_ADDRESS=$JOB_SERVER"
    # The job runs in an uploaded copy of the repo, hence an absolute run directory.
    echo "  $RAY_BIN job submit --working-dir . -- python -m stages.pretrain --config configs/tiny.yaml --run-dir \"\$PWD/runs/tiny-jobs\""
}

start() {
    if head_running; then
        echo "local Ray head already running (pid $(<"$PID_FILE"), log $LOG_FILE)"
        print_hint
        return
    fi
    [[ -x $RAY_BIN ]] || die "no Ray at $RAY_BIN: run 'make setup' first, or set PYTHON to the project's Python"
    mkdir -p "$STATE_DIR"
    echo "*" >"$STATE_DIR/.gitignore"  # the state dir never shows up in git status
    local cpus=${RLHF_RAY_CPUS:-$(nproc)} venv_bin
    venv_bin=$(cd "$(dirname "$PYTHON")" && pwd)
    # setsid makes the head the leader of a new process group that every Ray process it starts
    # joins, so `stop` ends exactly this head (`ray stop` would end every Ray of this user here).
    # --block keeps it in the foreground of that group and shuts its processes down on SIGTERM.
    # PATH starts with the project's bin: a job's `python` is then the one with torch and the stages.
    # RAY_ADDRESS is dropped so that a value exported for an earlier head cannot redirect this one.
    env -u RAY_ADDRESS PATH="$venv_bin:$PATH" setsid "$RAY_BIN" start --head --block \
        --port "$GCS_PORT" --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT" \
        --num-cpus "$cpus" --disable-usage-stats >"$LOG_FILE" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" >"$PID_FILE"
    printf 'gcs=127.0.0.1:%s\njob_server=%s\n' "$GCS_PORT" "$JOB_SERVER" >"$ADDRESS_FILE"

    # Ready when the job server answers; a head that dies on the way shows its log.
    for _ in $(seq 90); do
        kill -0 "$pid" 2>/dev/null || { tail -n 30 "$LOG_FILE" >&2; rm -f "$PID_FILE"; die "the Ray head exited (log $LOG_FILE)"; }
        if "$PYTHON" -c "import urllib.request; urllib.request.urlopen('$JOB_SERVER/api/version', timeout=2)" 2>/dev/null; then
            echo "local Ray head running (pid $pid, $cpus CPUs, log $LOG_FILE); to submit jobs to it:"
            print_hint
            return
        fi
        sleep 1
    done
    die "the job server did not answer at $JOB_SERVER within 90 s (log $LOG_FILE); infra/local-ray.sh stop ends the head"
}

stop() {
    if ! head_running; then
        rm -f "$PID_FILE"
        echo "no local Ray head recorded in $STATE_DIR"
        return
    fi
    local pid
    pid=$(<"$PID_FILE")
    # Gracefully first: `ray start --block` drains and stops its processes on SIGTERM. Whatever is
    # left of the group after that is ended by signal, still only within this head's group.
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 30); do group_alive "$pid" || break; sleep 1; done
    if group_alive "$pid"; then
        kill -TERM -- "-$pid" 2>/dev/null || true
        for _ in $(seq 10); do group_alive "$pid" || break; sleep 1; done
    fi
    group_alive "$pid" && kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$PID_FILE" "$ADDRESS_FILE"
    echo "local Ray head stopped (pid $pid)"
}

status() {
    if ! head_running; then
        echo "no local Ray head running (state in $STATE_DIR)"
        return 1
    fi
    echo "local Ray head running (pid $(<"$PID_FILE"), log $LOG_FILE)"
    cat "$ADDRESS_FILE"
    "$RAY_BIN" status --address "$(sed -n 's/^gcs=//p' "$ADDRESS_FILE")" || true
}

case ${1:-} in
    start | stop | status) "$1" ;;
    *) die "usage: infra/local-ray.sh start|stop|status" ;;
esac
