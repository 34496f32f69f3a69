#!/usr/bin/env bash
# Lanes against beanstalkd and Redis, same workloads, matching durability.
#
#   bench/compare.sh [--quick] [--durability sync,interval,none] [--jobs N]
#
# Installs beanstalkd and redis-server from Debian packages if missing,
# starts private instances (own port, own data folder under a temporary
# folder; never the system services), starts `lanes serve` from
# target/release, and runs lanes-loadgen against each:
#
#   (a) throughput: closed loop, 64 submitter connections, 500 slots
#       (10 agents x 50), N jobs (1,000,000; --quick 20,000), jobs of 0 s;
#       Lanes with one job per request and with batches of 100 (Redis too:
#       ZADD takes many members; beanstalkd has no batch put).
#   (b) latency: open loop (Poisson) at 50 % of each target's own maximum
#       from (a), 20 s (--quick 5 s), with jobs of 300 / max seconds (max:
#       the jobs/s of (a)): hundreds of the 500 slots busy, and slots that
#       free while work waits, which is what the dispatch latency measures.
#       At the maximum a slot is busy 500 / max s per job with jobs of 0 s
#       (dispatch, completion and their round trips); at half the rate,
#       with jobs of 300 / max s, that bound puts the slots at most 80 %
#       busy (0.5 x max x (300 + 500) / max / 500).
#   (c) backlog: 1,000,000 jobs (--quick 100,000) preloaded at priority -1
#       into 100 queues, then new priority-10 jobs at 1,000/s for 20 s
#       (--quick 5 s). On Lanes the preloaded jobs wait under a tag limit
#       (100 values, 1 running each); beanstalkd and Redis have no tag
#       limits, so there the preloaded jobs are ordinary waiting work that
#       the workers drain meanwhile; the new jobs jump ahead by priority
#       (beanstalkd across tubes; Redis only within a queue: BZPOPMIN takes
#       the first non-empty key, so a new job in queue 57 waits for queues
#       0 to 56 to empty).
#
# Durability pairs: Lanes `sync` vs beanstalkd `-b DIR -f 0` (fsync every
# write) vs Redis `appendonly yes, appendfsync always`; Lanes `interval=50`
# vs beanstalkd `-f 50` vs Redis `appendfsync everysec` (the closest Redis
# offers); Lanes `none` vs beanstalkd without binlog vs Redis without AOF.
#
# Prints one table per durability with each target's figures and the
# ratio to Lanes (one job per request). Raw JSON summaries stay in the
# temporary folder, whose path is printed; KEEP=1 keeps it (reports and server
# logs: each server's data folder is removed when the server stops).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
QUICK=0
DURABILITIES="sync,interval,none"
JOBS=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --durability) DURABILITIES="$2"; shift ;;
        --jobs) JOBS="$2"; shift ;;
        -h|--help) sed -n 2,35p "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
if [ "$QUICK" = 1 ]; then
    JOBS=${JOBS:-20000}; LATENCY_S=5; PRELOAD=100000; BACKLOG_S=5
else
    JOBS=${JOBS:-1000000}; LATENCY_S=20; PRELOAD=1000000; BACKLOG_S=20
fi

if ! command -v beanstalkd >/dev/null || ! command -v redis-server >/dev/null; then
    SUDO=""
    [ "$(id -u)" != 0 ] && SUDO=sudo
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends beanstalkd redis-server
fi

cd "$ROOT"
cargo build --release -p lanes-engine -p lanes-loadgen --bin lanes --bin lanes-loadgen
LANES="$ROOT/target/release/lanes"
LOADGEN="$ROOT/target/release/lanes-loadgen"

TMP=$(mktemp -d -t lanes-compare.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "${KEEP:-0}" != 1 ]; then rm -rf "$TMP"; fi
}
trap cleanup EXIT
echo "results in $TMP" >&2

SUBMITTER=compare-submitter-token-0001
AGENT=compare-agent-token-000000001
ADMIN=compare-admin-token-000000001

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() {
    for _ in $(seq 1 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "nothing listens on port $1" >&2; return 1
}
# Stops the server and removes its data folder (its log file stays): a
# full run writes about 8 GB of logs, snapshots and AOF files otherwise.
stop_server() {
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    rm -rf "$SERVER_DIR"
}

# start_server KIND DURABILITY: sets SERVER_PID, SERVER_DIR and TARGET.
start_server() {
    local kind=$1 durability=$2 port dir
    port=$(free_port)
    dir="$TMP/$kind-$durability-$RANDOM"
    mkdir -p "$dir"
    SERVER_DIR=$dir
    case "$kind" in
        lanes)
            local mode
            case "$durability" in sync) mode=sync ;; interval) mode=interval=50 ;; none) mode=none ;; esac
            "$LANES" serve --data "$dir" --listen "127.0.0.1:$port" --durability "$mode" \
                --token "submitter=$SUBMITTER" --token "agent=$AGENT" --token "admin=$ADMIN" \
                >"$dir.log" 2>&1 &
            TARGET="lanes://127.0.0.1:$port" ;;
        beanstalkd)
            local flags=()
            case "$durability" in sync) flags=(-b "$dir" -f 0) ;; interval) flags=(-b "$dir" -f 50) ;; none) flags=() ;; esac
            beanstalkd -l 127.0.0.1 -p "$port" "${flags[@]}" >"$dir.log" 2>&1 &
            TARGET="beanstalkd://127.0.0.1:$port" ;;
        redis)
            local aof
            case "$durability" in
                sync) aof=(--appendonly yes --appendfsync always) ;;
                interval) aof=(--appendonly yes --appendfsync everysec) ;;
                none) aof=(--appendonly no) ;;
            esac
            redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --save '' \
                --daemonize no --protected-mode no "${aof[@]}" >"$dir.log" 2>&1 &
            TARGET="redis://127.0.0.1:$port" ;;
    esac
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    wait_port "$port"
}

# loadgen NAME ARGS...: runs against $TARGET, summary in $TMP/NAME.json.
loadgen() {
    local name=$1; shift
    LANES_TOKEN=$SUBMITTER LANES_AGENT_TOKEN=$AGENT LANES_ADMIN_TOKEN=$ADMIN \
        "$LOADGEN" --target "$TARGET" --quiet --seed 6 --json "$TMP/$name.json" "$@" \
        >"$TMP/$name.txt" 2>&1 || { echo "run $name failed:" >&2; tail -5 "$TMP/$name.txt" >&2; return 0; }
}

throughput_of() {
    python3 -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["rates"]["achieved_jobs_per_s"]))' "$1" 2>/dev/null || echo 0
}

SLOTS=(--agents 10 --slots 50)
VARIANTS=("lanes:1" "lanes:100" "beanstalkd:1" "redis:1" "redis:100")
IFS=',' read -r -a DURABILITY_LIST <<<"$DURABILITIES"
for durability in "${DURABILITY_LIST[@]}"; do
    for variant in "${VARIANTS[@]}"; do
        kind=${variant%%:*}; size=${variant##*:}
        name="$durability-$kind-$size"
        echo "== $name" >&2
        # (a) throughput
        start_server "$kind" "$durability"
        loadgen "a-$name" --closed --outstanding 1 --connections 64 "${SLOTS[@]}" \
            --jobs "$JOBS" --duration 300s --run-size "$size"
        stop_server
        # (b) latency at half of this target's maximum
        max=$(throughput_of "$TMP/a-$name.json")
        if [ "$max" -gt 0 ]; then
            rate=$(python3 -c "print(max(1.0, $max * 0.5 / $size))")
            job_us=$(python3 -c "print(int(300 / $max * 1e6))")
            start_server "$kind" "$durability"
            loadgen "b-$name" --rate "$rate" --connections 64 "${SLOTS[@]}" \
                --duration "${LATENCY_S}s" --run-size "$size" --job-duration "${job_us}us"
            stop_server
        fi
        # (c) backlog, one job per request only
        if [ "$size" = 1 ]; then
            start_server "$kind" "$durability"
            loadgen "c-$name" --preload "$PRELOAD" --queues 100 --preload-tag-values 100 \
                --preload-limit 1 --priorities 10 --rate 1000 --connections 8 "${SLOTS[@]}" \
                --duration "${BACKLOG_S}s"
            stop_server
        fi
    done
done

python3 - "$TMP" "$DURABILITIES" <<'PY'
import json, os, sys
tmp, durabilities = sys.argv[1], sys.argv[2].split(",")
variants = ["lanes-1", "lanes-100", "beanstalkd-1", "redis-1", "redis-100"]
def load(name):
    try:
        return json.load(open(os.path.join(tmp, name + ".json")))
    except OSError:
        return None
def lat(summary, metric, p):
    # No samples (e.g. no agent was ever full): no figure, not a zero.
    if not summary or summary["latency"][metric]["overall"]["count"] == 0:
        return None
    return summary["latency"][metric]["overall"][p]
def fmt(v, unit=""):
    return "-" if v is None else f"{v:,.0f}{unit}"
def ratio(v, base):
    return "-" if v is None or not base else f"{v / base:.2f}x"
for durability in durabilities:
    print(f"\n### durability: {durability}\n")
    print("| target | jobs/request | (a) jobs/s | vs lanes | (b) jobs/s | (b) queue wait p50 µs | p99 µs | dispatch p50 µs | p99 µs | p99.9 µs | samples | submit p99 µs | vs lanes (dispatch p99) | (c) queue wait p50 µs | p99 µs | vs lanes (p99) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    base = {k: load(f"{k}-{durability}-lanes-1") for k in "abc"}
    for variant in variants:
        kind, size = variant.split("-")
        a = load(f"a-{durability}-{variant}")
        b = load(f"b-{durability}-{variant}")
        c = load(f"c-{durability}-{variant}")
        tput = a["rates"]["achieved_jobs_per_s"] if a else None
        base_tput = base["a"]["rates"]["achieved_jobs_per_s"] if base["a"] else None
        rate = b["rates"]["offered_jobs_per_s"] if b else None
        d99 = lat(b, "dispatch", "p99_us")
        q99 = lat(c, "queue_wait", "p99_us")
        samples = b["latency"]["dispatch"]["overall"]["count"] if b else None
        print(f"| {kind} | {size} | {fmt(tput)} | {ratio(tput, base_tput)} | {fmt(rate)} | "
              f"{fmt(lat(b, 'queue_wait', 'p50_us'))} | {fmt(lat(b, 'queue_wait', 'p99_us'))} | "
              f"{fmt(lat(b, 'dispatch', 'p50_us'))} | {fmt(d99)} | {fmt(lat(b, 'dispatch', 'p999_us'))} | {fmt(samples)} | "
              f"{fmt(lat(b, 'submit_ack', 'p99_us'))} | {ratio(d99, lat(base['b'], 'dispatch', 'p99_us'))} | "
              f"{fmt(lat(c, 'queue_wait', 'p50_us'))} | {fmt(q99)} | {ratio(q99, lat(base['c'], 'queue_wait', 'p99_us'))} |")
    warnings = []
    for name in sorted(os.listdir(tmp)):
        if name.endswith(".json") and f"-{durability}-" in name:
            s = json.load(open(os.path.join(tmp, name)))
            for w in s.get("warnings", []):
                warnings.append(f"- {name[:-5]}: {w}")
            o = s.get("order")
            if o and o["violations"]:
                warnings.append(f"- {name[:-5]}: {o['violations']} ORDER VIOLATIONS")
    if warnings:
        print("\nwarnings:\n" + "\n".join(warnings))
PY
