#!/usr/bin/env bash
# What one proxied small request costs in code, for Portico or NGINX:
# instructions, instruction-cache misses (callgrind simulating this
# machine's L1 caches, from /sys; 32 KiB 8-way if unknown) and the hot-code footprint (distinct 64-byte lines of code run at
# least once every other request). Deterministic, unlike wall-clock figures.
# See docs/performance.md, "Where the time goes: the instruction cache".
#
#   bench/icache.sh portico [BIN]   # BIN defaults to target/release/portico
#   bench/icache.sh nginx
#
# The server runs under valgrind on core 0, `wrk -t1 -c50` on core 1 against
# bench/origin.c. Counts include start-up (about 3.5 M instructions for
# Portico), small against the run's. Needs valgrind, wrk, gcc (apt-get).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WHO=${1:?usage: bench/icache.sh portico|nginx [BIN]}
BIN=${2:-$HERE/../target/release/portico}
SECONDS_LOADED=${ICACHE_SECONDS:-8}
ORIGIN_PORT=${ORIGIN_PORT:-19000}
PORT=${ICACHE_PORT:-19089}
[[ $WHO != portico || -x $BIN ]] || { echo "icache.sh: no binary $BIN" >&2; exit 1; }
# This core's L1 instruction and data caches as size,ways,line for valgrind.
l1() { # Instruction | Data
    local d
    for d in /sys/devices/system/cpu/cpu0/cache/index*; do
        if [[ $(cat "$d/level" 2>/dev/null) == 1 && $(cat "$d/type" 2>/dev/null) == "$1" ]]; then
            echo "$(($(sed 's/K$//' "$d/size") * 1024)),$(cat "$d/ways_of_associativity"),$(cat "$d/coherency_line_size")"
            return
        fi
    done
    echo 32768,8,64
}
I1=$(l1 Instruction)
D1=$(l1 Data)

for tool in valgrind wrk gcc curl $([[ $WHO == nginx ]] && echo nginx); do
    command -v "$tool" >/dev/null || { echo "icache.sh: needs $tool (apt-get install valgrind wrk gcc curl nginx)" >&2; exit 1; }
done
T=$(mktemp -d /tmp/portico-icache.XXXXXX)
cleanup() { pkill -P $$ 2>/dev/null || true; sleep 0.5; rm -rf "$T"; }
trap cleanup EXIT
gcc -O2 -o "$T/origin" "$HERE/origin.c"
taskset -c 1 "$T/origin" "$ORIGIN_PORT" >/dev/null 2>&1 &

case $WHO in
portico)
    cat >"$T/portico.yaml" <<EOF
workers: 1
access_log: { enabled: false }
listeners:
  - { name: bench, address: "127.0.0.1:$PORT" }
upstreams:
  origin: { endpoints: ["127.0.0.1:$ORIGIN_PORT"], pool: { max_idle: 1024 } }
routes:
  - { name: all, match: { prefix: / }, upstream: origin }
EOF
    cmd=("$BIN" run -c "$T/portico.yaml") ;;
nginx)
    mkdir -p "$T/nginx"
    cat >"$T/nginx/nginx.conf" <<EOF
worker_processes 1;
master_process off;
daemon off;
pid $T/nginx/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    upstream origin { server 127.0.0.1:$ORIGIN_PORT; keepalive 1024; }
    server {
        listen 127.0.0.1:$PORT;
        location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
}
EOF
    cmd=(nginx -p "$T/nginx" -e "$T/nginx/error.log" -c "$T/nginx/nginx.conf") ;;
*) echo "icache.sh: portico or nginx, not '$WHO'" >&2; exit 1 ;;
esac

taskset -c 0 valgrind --tool=callgrind --cache-sim=yes --I1="$I1" --D1="$D1" \
    --dump-instr=yes --compress-pos=no --compress-strings=no \
    --callgrind-out-file="$T/out" "${cmd[@]}" 2>"$T/valgrind.log" &
vg=$!
for ((i = 0; i < 300; i++)); do
    curl -s -o /dev/null "http://127.0.0.1:$PORT/small" && break
    ((i < 299)) || { echo "icache.sh: the server did not answer" >&2; cat "$T/valgrind.log" >&2; exit 1; }
    sleep 0.1
done
taskset -c 1 wrk -t1 -c50 -d"${SECONDS_LOADED}s" "http://127.0.0.1:$PORT/small" >"$T/wrk"
kill -TERM "$vg"
for ((i = 0; i < 300; i++)); do kill -0 "$vg" 2>/dev/null || break; sleep 0.1; done
wait "$vg" 2>/dev/null || true
requests=$(awk '/requests in/ {print $1}' "$T/wrk")
[[ -s $T/out && ${requests:-0} -gt 0 ]] || { echo "icache.sh: no profile or no requests" >&2; cat "$T/valgrind.log" >&2; exit 1; }

# Per-instruction lines are "0xADDR LINE Ir Dr Dw I1mr ..."; the line after
# "calls=" is a call's inclusive cost, not an instruction of this function.
awk -v req="$requests" -v who="$WHO" -v l1i="$I1" '
    /^events:/ { for (i = 2; i <= NF; i++) col[$i] = i - 1 }
    /^summary:/ { ir = $(col["Ir"] + 1); i1 = $(col["I1mr"] + 1) }
    /^ob=/ { ob = substr($0, 4) }
    /^calls=/ { skip = 1; next }
    /^0x/ {
        if (skip) { skip = 0; next }
        n[ob SUBSEP $1] += $3
    }
    { skip = 0 }
    END {
        for (k in n) if (n[k] >= req / 2) {
            # The 64-byte line of a hex address: all but its last two
            # digits, and the upper two bits of the second-last one.
            split(k, p, SUBSEP)
            a = tolower(p[2])
            d = index("0123456789abcdef", substr(a, length(a) - 1, 1)) - 1
            line[p[1] SUBSEP substr(a, 1, length(a) - 2) SUBSEP int(d / 4)] = 1
        }
        for (l in line) hot++
        printf "%s: %d requests; per request: %.0f instructions, %.0f L1i misses (%s); hot code %d lines = %.0f KiB\n",
            who, req, ir / req, i1 / req, l1i, hot, hot * 64 / 1024
    }' "$T/out"
