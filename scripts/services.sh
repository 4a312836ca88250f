#!/usr/bin/env bash
# Development/CI services for aiosd: RabbitMQ and FerretDB (MongoDB-compatible), on 127.0.0.1,
# without systemd. Usage: services.sh install|start|stop|status
set -euo pipefail

HOST=127.0.0.1
AMQP_PORT=${AIOSD_AMQP_PORT:-5672}
MGMT_PORT=${AIOSD_AMQP_MGMT_PORT:-15672}
MONGO_PORT=${AIOSD_MONGO_PORT:-27017}
STATE_DIR=${AIOSD_STATE_DIR:-$HOME/.local/state/aiosd-dev}
BIN_DIR=${XDG_CACHE_HOME:-$HOME/.cache}/aiosd/bin
TIMEOUT=${AIOSD_SERVICES_TIMEOUT:-90}

FERRETDB_VERSION=v1.24.2
# The development server carries one patch (scripts/ferretdb-id-index.patch): its SQLite handler
# addresses _id with an expression the _id index does not match, so every lookup by _id scanned
# the table. The binary's name carries the patch's hash, so a changed patch means a new build.
FERRETDB_PATCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/ferretdb-id-index.patch
FERRETDB=$BIN_DIR/ferretdb-$FERRETDB_VERSION-$(sha256sum "$FERRETDB_PATCH" | cut -c1-12)

RMQ_SBIN=/usr/lib/rabbitmq/bin
RMQ_DIR=$STATE_DIR/rabbitmq
# One node name per AMQP port, so instances on other ports never clash.
RMQ_NODE=aiosd-$AMQP_PORT@localhost
RMQ_PID=$RMQ_DIR/rabbitmq.pid           # the Erlang VM, written by RabbitMQ itself
RMQ_SERVER_PID=$RMQ_DIR/server.pid      # the rabbitmq-server script we start, which owns the VM
RMQ_LOG=$RMQ_DIR/log/$RMQ_NODE.log
RMQ_STARTUP_LOG=$RMQ_DIR/log/startup.log

FDB_DIR=$STATE_DIR/ferretdb
FDB_PID=$FDB_DIR/ferretdb.pid
FDB_LOG=$FDB_DIR/ferretdb.log

say() { echo "services: $*"; }
die() { echo "services: ERROR: $*" >&2; exit 1; }

# --- probes (python3 stdlib only: a fresh machine has nothing else) -------------------------

# probe amqp|http|mongo PORT -> exit 0 when the service really answers its protocol.
probe() {
    python3 - "$1" "$HOST" "$2" <<'PY'
import base64, socket, struct, sys, urllib.request

kind, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])

def amqp():
    # A broker answers the protocol header with a Connection.Start method frame (type 1).
    with socket.create_connection((host, port), timeout=3) as s:
        s.sendall(b"AMQP\x00\x00\x09\x01")
        return s.recv(1) == b"\x01"

def http():
    req = urllib.request.Request(f"http://{host}:{port}/api/overview")
    req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    with urllib.request.urlopen(req, timeout=3) as r:
        return r.status == 200

def mongo():
    # OP_MSG {ping: 1, $db: "admin"}; works against MongoDB and FerretDB alike.
    body = b"\x10ping\x00" + struct.pack("<i", 1) + b"\x02$db\x00" + struct.pack("<i", 6) + b"admin\x00"
    doc = struct.pack("<i", len(body) + 5) + body + b"\x00"
    msg = struct.pack("<I", 0) + b"\x00" + doc
    with socket.create_connection((host, port), timeout=3) as s:
        s.sendall(struct.pack("<iiii", 16 + len(msg), 1, 0, 2013) + msg)
        head = s.recv(16, socket.MSG_WAITALL)
        length = struct.unpack("<i", head[:4])[0]
        reply = s.recv(length - 16, socket.MSG_WAITALL)
    return b"\x01ok\x00" + struct.pack("<d", 1.0) in reply or b"\x10ok\x00\x01\x00\x00\x00" in reply

try:
    sys.exit(0 if {"amqp": amqp, "http": http, "mongo": mongo}[kind]() else 1)
except Exception:
    sys.exit(1)
PY
}

rabbitmq_up() { probe amqp "$AMQP_PORT" && probe http "$MGMT_PORT"; }
ferretdb_up() { probe mongo "$MONGO_PORT"; }

# pid_alive PIDFILE NAME -> the pid in PIDFILE runs a process whose command line mentions NAME
# (guards against a stale pid file whose pid was reused).
pid_alive() {
    local pid
    [[ -s $1 ]] || return 1
    pid=$(<"$1")
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null \
        && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$2"
}

# wait_until SERVICE LOG PIDFILE NAME CHECK... -> poll CHECK until it passes or TIMEOUT expires;
# fail early if the process we started died.
wait_until() {
    local service=$1 log=$2 pidfile=$3 name=$4 deadline=$((SECONDS + TIMEOUT))
    shift 4
    until "$@"; do
        pid_alive "$pidfile" "$name" || die "$service exited during startup; read $log"
        ((SECONDS < deadline)) || die "$service did not answer within ${TIMEOUT}s; read $log"
        sleep 1
    done
}

# --- installation ---------------------------------------------------------------------------

APT_UPDATED=
apt_install() {
    local sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null || die "need root (or sudo) to apt-get install $*"
        sudo=(sudo)
    fi
    # Keep package scripts from starting the system-wide services: we run our own instances.
    local policy=/usr/sbin/policy-rc.d added_policy=
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
        "${sudo[@]}" chmod 755 "$policy"
        added_policy=1
    fi
    if [[ -z $APT_UPDATED ]]; then
        say "apt-get update"
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
        APT_UPDATED=1
    fi
    say "apt-get install $*"
    local rc=0
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" \
        >/dev/null || rc=$?
    [[ -z $added_policy ]] || "${sudo[@]}" rm -f "$policy"
    ((rc == 0)) || die "apt-get install $* failed"
}

find_go() {
    command -v go && return
    [[ -x /usr/local/go/bin/go ]] && echo /usr/local/go/bin/go && return
    die "Go is needed to build FerretDB; install it or put it on PATH"
}

ferretdb_ok() {
    [[ -x $FERRETDB ]] && [[ $("$FERRETDB" --version 2>/dev/null) == *"version: $FERRETDB_VERSION"* ]]
}

# `go install github.com/FerretDB/FerretDB/cmd/ferretdb@v1.24.2` builds a binary that panics at
# start: build/version/version.txt is generated by FerretDB's release tooling and is not in the
# module zip. So build from a copy of the module source with that file written.
build_ferretdb() {
    local go src tmp
    go=$(find_go)
    mkdir -p "$BIN_DIR"
    say "building FerretDB $FERRETDB_VERSION into $BIN_DIR (takes a minute or two)"
    tmp=$(mktemp -d)
    # Run outside any Go module, so the download is for this module alone.
    src=$(cd "$tmp" && "$go" mod download -json "github.com/FerretDB/FerretDB@$FERRETDB_VERSION" \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])') \
        || { rm -rf "$tmp"; die "could not download the FerretDB $FERRETDB_VERSION module"; }
    cp -r "$src" "$tmp/src"
    chmod -R u+w "$tmp/src"
    echo "$FERRETDB_VERSION" >"$tmp/src/build/version/version.txt"
    if command -v patch >/dev/null; then
        patch -s -d "$tmp/src" -p1 <"$FERRETDB_PATCH"
    else
        git -C "$tmp/src" apply -p1 "$FERRETDB_PATCH"
    fi || { rm -rf "$tmp"; die "could not apply $FERRETDB_PATCH to FerretDB $FERRETDB_VERSION"; }
    (cd "$tmp/src" && CGO_ENABLED=0 "$go" build -trimpath -o "$FERRETDB.tmp" ./cmd/ferretdb) \
        || { rm -rf "$tmp" "$FERRETDB.tmp"; die "FerretDB build failed"; }
    rm -rf "$tmp"
    mv -f "$FERRETDB.tmp" "$FERRETDB"
}

install_ferretdb() {
    ferretdb_ok && return
    mkdir -p "$BIN_DIR"
    # Serialise concurrent builds (parallel `make` runs, CI jobs sharing a cache).
    exec {lock}>"$BIN_DIR/.build.lock"
    flock "$lock"
    ferretdb_ok || build_ferretdb
    exec {lock}>&-
    ferretdb_ok || die "$FERRETDB does not run; remove it and retry"
}

# The headless browser tests/test_web.py drives the web console with (selenium talks to chromedriver).
BROWSER=/usr/bin/chromium
BROWSER_DRIVER=/usr/bin/chromedriver
install_browser() {
    [[ -x $BROWSER && -x $BROWSER_DRIVER ]] || apt_install chromium chromium-driver
}

cmd_install() {
    [[ -x $RMQ_SBIN/rabbitmq-server ]] || apt_install rabbitmq-server
    command -v systemd-analyze >/dev/null || apt_install systemd
    install_browser
    install_ferretdb
}

# --- RabbitMQ -------------------------------------------------------------------------------

rmq_env() {
    # The node and its CLI read the Erlang cookie from $HOME; give both the same private one.
    export HOME=$RMQ_DIR
    export RABBITMQ_NODENAME=$RMQ_NODE
    export RABBITMQ_NODE_IP_ADDRESS=$HOST RABBITMQ_NODE_PORT=$AMQP_PORT
    export RABBITMQ_DIST_PORT=$((AMQP_PORT + 20000))
    export RABBITMQ_MNESIA_BASE=$RMQ_DIR/mnesia RABBITMQ_LOG_BASE=$RMQ_DIR/log
    export RABBITMQ_PID_FILE=$RMQ_PID
    export RABBITMQ_CONFIG_FILE=$RMQ_DIR/rabbitmq.conf
    export RABBITMQ_ADVANCED_CONFIG_FILE=$RMQ_DIR/advanced.config
    export RABBITMQ_ENABLED_PLUGINS_FILE=$RMQ_DIR/enabled_plugins
    # Ignore /etc/rabbitmq/rabbitmq-env.conf: it belongs to the system-wide broker.
    export RABBITMQ_CONF_ENV_FILE=$RMQ_DIR/rabbitmq-env.conf
    export ERL_EPMD_ADDRESS=$HOST
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
}

start_rabbitmq() {
    if rabbitmq_up; then
        say "rabbitmq up on $HOST:$AMQP_PORT (management $HOST:$MGMT_PORT)"
        return
    fi
    if ! pid_alive "$RMQ_SERVER_PID" rabbitmq-server; then
        probe amqp "$AMQP_PORT" \
            && die "$HOST:$AMQP_PORT answers AMQP but not the management API on :$MGMT_PORT; it is not ours, stop it or set AIOSD_AMQP_PORT"
        mkdir -p "$RMQ_DIR/log" "$RMQ_DIR/mnesia"
        cat >"$RMQ_DIR/rabbitmq.conf" <<EOF
management.tcp.ip = $HOST
management.tcp.port = $MGMT_PORT
log.console = false
log.file.level = info
EOF
        echo '[rabbitmq_management].' >"$RMQ_DIR/enabled_plugins"
        : >"$RMQ_DIR/rabbitmq-env.conf"
        rm -f "$RMQ_PID"
        say "starting rabbitmq (log: $RMQ_LOG)"
        # Foreground mode in a new session: the script turns SIGTERM into a clean broker stop,
        # and its output (boot errors before logging starts) goes to the startup log.
        (rmq_env && cd "$RMQ_DIR" && exec setsid nohup "$RMQ_SBIN/rabbitmq-server" \
            >>"$RMQ_STARTUP_LOG" 2>&1 </dev/null {state_lock}>&-) &
        echo $! >"$RMQ_SERVER_PID"
    fi
    wait_until rabbitmq "$RMQ_LOG and $RMQ_STARTUP_LOG" "$RMQ_SERVER_PID" rabbitmq-server rabbitmq_up
    say "rabbitmq up on $HOST:$AMQP_PORT (management $HOST:$MGMT_PORT)"
}

stop_rabbitmq() {
    if ! pid_alive "$RMQ_SERVER_PID" rabbitmq-server; then
        say "rabbitmq not started by this script (no live $RMQ_SERVER_PID)"
        return
    fi
    say "stopping rabbitmq (pid $(<"$RMQ_SERVER_PID"))"
    # The script stops the VM on SIGTERM and exits once it is gone.
    kill_wait "$(<"$RMQ_SERVER_PID")"
    pid_alive "$RMQ_PID" beam && kill_wait "$(<"$RMQ_PID")"
    rm -f "$RMQ_SERVER_PID" "$RMQ_PID"
}

# --- FerretDB -------------------------------------------------------------------------------

start_ferretdb() {
    # A server this script started from another build (before the patch changed) is replaced;
    # its data stays in $FDB_DIR.
    if pid_alive "$FDB_PID" ferretdb && [[ $(readlink "/proc/$(<"$FDB_PID")/exe") != "$FERRETDB" ]]; then
        say "restarting ferretdb on the current build ($FERRETDB)"
        kill_wait "$(<"$FDB_PID")"
        rm -f "$FDB_PID"
    fi
    if ferretdb_up; then
        say "ferretdb up on $HOST:$MONGO_PORT"
        return
    fi
    if ! pid_alive "$FDB_PID" ferretdb; then
        mkdir -p "$FDB_DIR/data"
        say "starting ferretdb (log: $FDB_LOG)"
        # The debug HTTP listener (default :8088) is off: nothing here uses it and it may clash.
        # synchronous(normal) with FerretDB's default WAL journal survives a crash of any
        # process (only an OS crash can drop the last commits) and makes each write ~20x
        # cheaper than the default fsync per commit: right for a development server.
        setsid nohup "$FERRETDB" \
            --handler=sqlite --sqlite-url="file:$FDB_DIR/data/?_pragma=synchronous(normal)" \
            --listen-addr="$HOST:$MONGO_PORT" --state-dir="$FDB_DIR" \
            --telemetry=disable --debug-addr=- --log-level=info \
            >>"$FDB_LOG" 2>&1 </dev/null {state_lock}>&- &
        echo $! >"$FDB_PID"
    fi
    wait_until ferretdb "$FDB_LOG" "$FDB_PID" ferretdb ferretdb_up
    say "ferretdb up on $HOST:$MONGO_PORT"
}

stop_ferretdb() {
    if ! pid_alive "$FDB_PID" ferretdb; then
        say "ferretdb not started by this script (no live $FDB_PID)"
        return
    fi
    say "stopping ferretdb (pid $(<"$FDB_PID"))"
    kill_wait "$(<"$FDB_PID")"
    rm -f "$FDB_PID"
}

# kill_wait PID -> SIGTERM, wait up to 30 s, then SIGKILL.
kill_wait() {
    kill -TERM "$1" 2>/dev/null || return 0
    for _ in $(seq 60); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.5
    done
    kill -KILL "$1" 2>/dev/null || true
}

# --- commands -------------------------------------------------------------------------------

# Serialise start/stop: two parallel `make test` runs must not start two brokers.
# (The services are started with this fd closed, or they would hold the lock forever.)
lock_state() {
    mkdir -p "$STATE_DIR"
    exec {state_lock}>"$STATE_DIR/.lock"
    flock "$state_lock"
}

cmd_start() {
    cmd_install
    lock_state
    start_rabbitmq
    start_ferretdb
}

cmd_stop() {
    lock_state
    stop_ferretdb
    stop_rabbitmq
}

cmd_status() {
    local rc=0
    if rabbitmq_up; then
        echo "rabbitmq: running on $HOST:$AMQP_PORT (management http://$HOST:$MGMT_PORT)"
    else
        echo "rabbitmq: stopped ($HOST:$AMQP_PORT)"
        rc=1
    fi
    if ferretdb_up; then
        echo "ferretdb: running on $HOST:$MONGO_PORT"
    else
        echo "ferretdb: stopped ($HOST:$MONGO_PORT)"
        rc=1
    fi
    return "$rc"
}

case ${1:-} in
    install) cmd_install ;;
    browser) install_browser ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 install|start|stop|status|browser" >&2; exit 2 ;;
esac
