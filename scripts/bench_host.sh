#!/usr/bin/env bash
# One command on a bare many-core host (issue 19): the scaling benchmark of slotline
# against clusters of 1, 2, 4 ... N masters, every server pinned to its own core, the
# client pinned apart, 2 KiB, 1, 4 and 32 MiB values, both of slotline's read modes and
# the peers (naive, parallel) against the same clusters.
#
# Needs only the `slotline` binary and a server binary (redis-server or valkey-server):
# no Cargo, no Python, no network. Everything lands in one folder:
#   host.txt          what ran where (kernel, CPUs, server version, pinnings, flags)
#   tune.json/.txt    `slotline tune`: cores, NUMA nodes, NICs and its advice
#   records.jsonl     every JSON record (each names masters, read, value_size, peer...)
#   tables.txt        the bench's tables, ratio rows and the scaling table
#   bench.jsonl, throughput.svg, latency.svg   the same records and the plots
#
# Usage: scripts/bench_host.sh [OUT_DIR]        (default: bench-host-<host>-<date>)
# Environment (all optional):
#   SLOTLINE_BIN   the slotline binary (default: slotline on PATH, else next to this
#                  script's repository in target/release)
#   SERVER_BIN     the server binary (default: $SLOTLINE_REDIS_SERVER, redis-server,
#                  valkey-server on PATH)
#   MAX_MASTERS    largest cluster (default: one master per server core, at most 16)
#   SIZES          value sizes (default 2k,1m,4m,32m)
#   BATCH, BATCHES, RUNS   per size (default: the bench's own; RUNS 3)
#   IO_THREADS     --io-threads of every server (default: unset, the server's 1)
#   CLIENT_CORES, SERVER_CORES   CPU lists (default: see "pinning" below)
#   PEERS          default naive,parallel,slotline
#   BACKEND        slotline's backend(s): auto, io_uring, epoll, both (default auto)
#   MAX_DATA       --max-data (default 4g)
#   CONCURRENCY    batches in flight (default 1; small values on many masters need more
#                  than one batch in flight to load them, see RESULTS.md "Scaling model")
#
# Pinning: the CPUs this process may use (from `slotline tune`) are split in two; on a
# host with several NUMA nodes the client takes the node `slotline tune` recommends for
# the shards and the servers the other nodes' CPUs; on one node the client takes the
# first half and the servers the second. Each master gets its own server core
# (round-robin when there are more masters than cores).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-bench-host-$(hostname -s 2>/dev/null || echo host)-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$out"

# --- binaries -------------------------------------------------------------------------
bin="${SLOTLINE_BIN:-}"
if [ -z "$bin" ]; then
    if command -v slotline >/dev/null 2>&1; then
        bin="$(command -v slotline)"
    elif [ -x "$here/../target/release/slotline" ]; then
        bin="$here/../target/release/slotline"
    fi
fi
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
    echo "error: no slotline binary: set SLOTLINE_BIN or put slotline on PATH" >&2
    exit 2
fi
server="${SERVER_BIN:-${SLOTLINE_REDIS_SERVER:-}}"
if [ -z "$server" ]; then
    for c in redis-server valkey-server /usr/bin/redis-server /usr/sbin/redis-server; do
        if command -v "$c" >/dev/null 2>&1; then server="$(command -v "$c")"; break; fi
    done
fi
if [ -z "$server" ] || [ ! -x "$server" ]; then
    echo "error: no server binary: set SERVER_BIN to a redis-server or valkey-server" >&2
    exit 2
fi

# --- the host -------------------------------------------------------------------------
"$bin" tune --json >"$out/tune.json"
"$bin" tune >"$out/tune.txt" || true
# A JSON array of integers out of tune.json, as "0 1 2".
ints() { grep -o "\"$1\":\[[0-9,]*\]" "$out/tune.json" | head -n1 | sed 's/.*\[//; s/\]//; s/,/ /g'; }
allowed=($(ints allowed))
nodes=($(ints nodes))
shard=($(ints shard_cores))
if [ "${#allowed[@]}" -eq 0 ]; then
    echo "error: slotline tune reported no usable CPU" >&2
    exit 1
fi
join() { local IFS=,; echo "$*"; }

# --- pinning --------------------------------------------------------------------------
client_cpus=()
server_cpus=()
if [ -z "${CLIENT_CORES:-}" ] || [ -z "${SERVER_CORES:-}" ]; then
    if [ "${#nodes[@]}" -gt 1 ] && [ "${#shard[@]}" -gt 0 ]; then
        # The recommended node's CPUs for the client; every other allowed CPU serves.
        tnode="$(grep -o '"node":[0-9][0-9]*' "$out/tune.json" | tail -n1 | tr -dc 0-9)"
        nodecpus=" "
        if [ -r "/sys/devices/system/node/node$tnode/cpulist" ]; then
            for part in $(tr ',' ' ' <"/sys/devices/system/node/node$tnode/cpulist"); do
                a="${part%-*}"; b="${part#*-}"
                for ((c = a; c <= b; c++)); do nodecpus+="$c "; done
            done
        fi
        for c in "${allowed[@]}"; do
            case "$nodecpus" in *" $c "*) client_cpus+=("$c") ;; *) server_cpus+=("$c") ;; esac
        done
    fi
    if [ "${#client_cpus[@]}" -eq 0 ] || [ "${#server_cpus[@]}" -eq 0 ]; then
        client_cpus=()
        server_cpus=()
        half=$(((${#allowed[@]} + 1) / 2))
        for i in "${!allowed[@]}"; do
            if [ "$i" -lt "$half" ]; then client_cpus+=("${allowed[$i]}"); else server_cpus+=("${allowed[$i]}"); fi
        done
        # One CPU: client and server share it.
        if [ "${#server_cpus[@]}" -eq 0 ]; then server_cpus=("${client_cpus[@]}"); fi
    fi
fi
client_list="${CLIENT_CORES:-$(join "${client_cpus[@]}")}"
server_list="${SERVER_CORES:-$(join "${server_cpus[@]}")}"
nserver="$(echo "$server_list" | tr ',' '\n' | awk -F- 'NF==2{n+=$2-$1+1;next}{n++}END{print n+0}')"

# --- cluster sizes: 1, 2, 4 ... up to MAX_MASTERS ---------------------------------------
k="${IO_THREADS:-1}"
max="${MAX_MASTERS:-$((nserver / k))}"
if [ "$max" -lt 1 ]; then max=1; fi
if [ -z "${MAX_MASTERS:-}" ] && [ "$max" -gt 16 ]; then max=16; fi
masters=()
for ((m = 1; m < max; m *= 2)); do masters+=("$m"); done
masters+=("$max")

sizes="${SIZES:-2k,1m,4m,32m}"
args=(bench
    --masters "$(join "${masters[@]}")"
    --replicas 0
    --sizes "$sizes"
    --runs "${RUNS:-3}"
    --keys overwrite
    --peers "${PEERS:-naive,parallel,slotline}"
    --backend "${BACKEND:-auto}"
    --reads get,get-into
    --server-cores "$server_list"
    --client-cores "$client_list"
    --server-bin "$server"
    --max-data "${MAX_DATA:-4g}"
    --format json
    --plot "$out")
if [ -n "${BATCH:-}" ]; then args+=(--batch "$BATCH"); fi
if [ -n "${BATCHES:-}" ]; then args+=(--batches "$BATCHES"); fi
if [ -n "${IO_THREADS:-}" ]; then args+=(--io-threads "$IO_THREADS"); fi
if [ -n "${CONCURRENCY:-}" ]; then args+=(--concurrency "$CONCURRENCY"); fi

{
    echo "date:          $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "kernel:        $(uname -srm)"
    echo "cpus allowed:  ${allowed[*]}  (NUMA nodes: ${nodes[*]:-?})"
    echo "client cores:  $client_list"
    echo "server cores:  $server_list"
    echo "masters:       ${masters[*]}"
    echo "slotline:      $bin ($("$bin" --version 2>/dev/null || echo '?'))"
    echo "server:        $server ($("$server" --version 2>/dev/null | head -n1 || echo '?'))"
    echo "command:       $bin ${args[*]}"
} | tee "$out/host.txt"

SLOTLINE_NO_PROGRESS="${SLOTLINE_NO_PROGRESS:-1}" "$bin" "${args[@]}" \
    >"$out/records.jsonl" 2> >(tee "$out/tables.txt" >&2)

# The records must name their cluster size and read mode.
n="$(grep -c '^{' "$out/records.jsonl" || true)"
if [ "$n" -eq 0 ] || grep '^{' "$out/records.jsonl" | grep -qv '"masters":[0-9]'; then
    echo "error: records without masters in $out/records.jsonl" >&2
    exit 1
fi
if grep '^{' "$out/records.jsonl" | grep -qv '"read":"get'; then
    echo "error: records without a read mode in $out/records.jsonl" >&2
    exit 1
fi
for m in "${masters[@]}"; do
    if ! grep -q "\"masters\":$m," "$out/records.jsonl"; then
        echo "error: no record of the $m-master cluster" >&2
        exit 1
    fi
done
echo "bench_host: $n records, masters ${masters[*]}, in $out"
