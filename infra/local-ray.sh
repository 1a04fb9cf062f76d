#!/usr/bin/env bash
# A local Ray head for development, with the job server on 127.0.0.1:8265, so that stages run as
# Ray jobs the way they do on a cluster:
#   infra/local-ray.sh start|stop|status|probe
# Environment (relative paths are from the repo root):
#   PYTHON          the project's Python; Ray is the `ray` next to it  (default .venv/bin/python)
#   RLHF_RAY_STATE  where the head's pid, address and log are kept     (default .ray-local)
#   RLHF_RAY_CPUS   CPUs the head offers                               (default: all cores)
#   RLHF_RAY_PORT   the head's GCS port                                (default 6379)
#   RLHF_RAY_DASHBOARD_PORT  the job server's port                     (default 8265)
#   RLHF_RAY_AGENT_PORT      the HTTP port of the node's dashboard agent, which runs the jobs
#                            (default 52365, Ray's, also taken by any other local Ray started first)
# Token authentication, as Ray's own `ray start` decides it: RAY_AUTH_MODE=token|disabled if set, else
# token mode when a token is in reach (RAY_AUTH_TOKEN, the file RAY_AUTH_TOKEN_PATH names, or
# ~/.ray/auth_token, which `rlhf run` and `make demo` leave behind). `probe` tells a job server that
# answers from one that needs a token (HTTP 401), refuses the token sent (403) or is down.
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
DASHBOARD_PORT=${RLHF_RAY_DASHBOARD_PORT:-8265}
AGENT_PORT=${RLHF_RAY_AGENT_PORT:-52365}
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

# Where Ray's clients take the token from, in Ray's order: RAY_AUTH_TOKEN, else the file
# RAY_AUTH_TOKEN_PATH names (and no other), else ~/.ray/auth_token.
token_in_env() { local token=${RAY_AUTH_TOKEN:-}; [[ -n ${token//[[:space:]]/} ]]; }
token_source() {
    if token_in_env; then echo "RAY_AUTH_TOKEN"; else echo "${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"; fi
}
have_token() { token_in_env || [[ -s ${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token} ]]; }
TOKEN_HINT="set RAY_AUTH_MODE=token, with the cluster's token in RAY_AUTH_TOKEN, in the file RAY_AUTH_TOKEN_PATH names, or in ~/.ray/auth_token"

# The job server's state, as an exit status: 0 answers, 2 down (nothing answers), 3 answers but needs
# a token (HTTP 401: none sent), 4 refuses the token sent (403), 5 answers with another error. The
# token goes with the request when RAY_AUTH_MODE=token, or, RAY_AUTH_MODE unset, when the server's
# public /api/authentication_mode says "token" (the probe only asks 127.0.0.1). It is read from the
# environment and files by Python, never put on a command line.
PROBE_PY='
import json, os, sys, urllib.error, urllib.request
url = sys.argv[1]
def get(path, headers={}):
    return urllib.request.urlopen(urllib.request.Request(url + path, headers=headers), timeout=2)
try:
    mode = os.environ.get("RAY_AUTH_MODE", "").lower()
    if not mode:
        try:
            mode = json.load(get("/api/authentication_mode")).get("authentication_mode", "")
        except (urllib.error.HTTPError, ValueError, AttributeError):
            mode = ""
    headers = {}
    if mode == "token":
        token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
        if not token:
            path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
            try:
                token = open(path).read().strip()
            except (OSError, ValueError):
                token = ""
        if token:
            headers["Authorization"] = "Bearer " + token
    get("/api/version", headers).close()
except urllib.error.HTTPError as error:
    sys.exit({401: 3, 403: 4}.get(error.code, 5))
except Exception:  # refused, reset, timed out: nothing answers
    sys.exit(2)
'
probe_code() { "$PYTHON" -c "$PROBE_PY" "$JOB_SERVER" 2>/dev/null; }

probe_message() {
    case $1 in
        0) echo "the job server at $JOB_SERVER answers" ;;
        2) echo "nothing answers at $JOB_SERVER: the job server is down" ;;
        3) echo "the job server at $JOB_SERVER answers but needs a token (HTTP 401), and none was sent (RAY_AUTH_MODE is ${RAY_AUTH_MODE:-unset}, token from $(token_source)$(have_token || echo ": none there")): $TOKEN_HINT" ;;
        4) echo "the job server at $JOB_SERVER refuses the token from $(token_source) (HTTP 403): it is not this cluster's; give the cluster's token in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token" ;;
        *) echo "the job server at $JOB_SERVER answers with an error" ;;
    esac
}

print_hint() {
    echo "  export RAY_ADDRESS=$JOB_SERVER"
    # rlhf follows the head's token mode by itself; Ray's own clients (`ray job`, `ray status`) need it set.
    if [[ ${RAY_AUTH_MODE:-} == token ]]; then
        echo "  export RAY_AUTH_MODE=token   # token authentication: Ray's clients send the token from $(token_source)"
    fi
    # The job runs in an uploaded copy of the repo, hence an absolute run directory.
    echo "  $RAY_BIN job submit --working-dir . -- python -m stages.pretrain --config configs/tiny.yaml --run-dir \"\$PWD/runs/tiny-jobs\""
}

start() {
    if head_running; then
        echo "local Ray head already running (pid $(<"$PID_FILE"), log $LOG_FILE)"
        if [[ -z ${RAY_AUTH_MODE:-} && $(sed -n 's/^auth=//p' "$ADDRESS_FILE" 2>/dev/null) == token ]]; then
            export RAY_AUTH_MODE=token
        fi
        print_hint
        return
    fi
    [[ -x $RAY_BIN ]] || die "no Ray at $RAY_BIN: run 'make setup' first, or set PYTHON to the project's Python"
    # The head's auth mode, decided here as `ray start` would, and exported so that the head, the
    # probe below and the hint agree on it.
    local auth=${RAY_AUTH_MODE:-}
    auth=${auth,,}
    if [[ -z $auth ]]; then
        if have_token; then auth=token; else auth=disabled; fi
    fi
    if [[ $auth == token ]]; then
        have_token || die "RAY_AUTH_MODE=token but no token in $(token_source): '$RAY_BIN get-auth-token --generate' writes one to ~/.ray/auth_token, or set RAY_AUTH_TOKEN"
        export RAY_AUTH_MODE=token
    fi
    mkdir -p "$STATE_DIR"
    echo "*" >"$STATE_DIR/.gitignore"  # the state dir never shows up in git status
    local cpus=${RLHF_RAY_CPUS:-$(nproc)} venv_bin
    venv_bin=$(cd "$(dirname "$PYTHON")" && pwd)
    # setsid makes the head the leader of a new process group that every Ray process it starts
    # joins, so `stop` ends exactly this head (`ray stop` would end every Ray of this user here).
    # --block keeps it in the foreground of that group and shuts its processes down on SIGTERM.
    # PATH starts with the project's bin: a job's `python` is then the one with torch and the stages.
    # RAY_ADDRESS is dropped so that a value exported for an earlier head cannot redirect this one.
    # On SIGTERM Ray drains the node for up to 30 s before it stops (for Serve replicas to move to other
    # nodes); a head alone has nowhere to move them and would always wait out those 30 s, so no drain
    # unless RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S says otherwise.
    env -u RAY_ADDRESS PATH="$venv_bin:$PATH" RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="${RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S:-0}" setsid "$RAY_BIN" start --head --block \
        --port "$GCS_PORT" --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT" \
        --dashboard-agent-listen-port "$AGENT_PORT" \
        --num-cpus "$cpus" --disable-usage-stats >"$LOG_FILE" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" >"$PID_FILE"
    printf 'gcs=127.0.0.1:%s\njob_server=%s\nauth=%s\n' "$GCS_PORT" "$JOB_SERVER" "$auth" >"$ADDRESS_FILE"

    # Ready when the job server answers (with the token, in token mode); a head that dies on the way
    # shows its log, and a job server that answers but refuses says what to set.
    local code=2
    for _ in $(seq 90); do
        kill -0 "$pid" 2>/dev/null || { tail -n 30 "$LOG_FILE" >&2; rm -f "$PID_FILE"; die "the Ray head exited (log $LOG_FILE)"; }
        code=0
        probe_code || code=$?
        case $code in
            0)
                echo "local Ray head running (pid $pid, $cpus CPUs, auth mode $auth, log $LOG_FILE); to submit jobs to it:"
                print_hint
                return ;;
            3 | 4) die "$(probe_message "$code") (log $LOG_FILE); infra/local-ray.sh stop ends the head" ;;
        esac
        sleep 1
    done
    [[ $code == 2 ]] && die "the job server did not answer at $JOB_SERVER within 90 s (log $LOG_FILE); infra/local-ray.sh stop ends the head"
    die "$(probe_message "$code") for 90 s (log $LOG_FILE); infra/local-ray.sh stop ends the head"
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
    # `ray status` talks to the head's GCS, which wants the token in token mode.
    local auth
    auth=$(sed -n 's/^auth=//p' "$ADDRESS_FILE")
    if [[ $auth == token && -z ${RAY_AUTH_MODE:-} ]]; then export RAY_AUTH_MODE=token; fi
    local code=0
    probe_code || code=$?
    probe_message "$code"
    "$RAY_BIN" status --address "$(sed -n 's/^gcs=//p' "$ADDRESS_FILE")" || true
}

# The job server at 127.0.0.1:$DASHBOARD_PORT, whoever started it: says its state, exits with the
# probe's status (0 answers, 2 down, 3 needs a token, 4 refuses the token, 5 another error).
probe() {
    local code=0
    probe_code || code=$?
    probe_message "$code"
    return "$code"
}

case ${1:-} in
    start | stop | status | probe) "$1" ;;
    *) die "usage: infra/local-ray.sh start|stop|status|probe" ;;
esac
