#!/usr/bin/env bash
# Side-by-side benchmark: Portico vs NGINX vs HAProxy vs direct-to-origin.
# Follows /work/shared/BENCHMARKING.md: proxy pinned to one core with one worker,
# origin and load generator on the other core, interleaved rounds, medians.
# See bench/README.md for usage, columns and environment variables.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)

# ---------------------------------------------------------------- settings --
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
SCENARIOS=${SCENARIOS:-small50,small1,small500,64k,1m,close,h2,tls,tlsnew,h2tls}
PROXIES=${PROXIES:-direct,nginx,haproxy,portico,portico-pgo}
ACCESS_LOG=${ACCESS_LOG:-off}          # off | json (the side run)
PROXY_CORE=${PROXY_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}              # origin and load generator
WRK_THREADS=${WRK_THREADS:-1}
H2_CONNS=${H2_CONNS:-50}
H2_STREAMS=${H2_STREAMS:-10}
UPSTREAM_POOL=${UPSTREAM_POOL:-1024}   # idle upstream connections kept (nginx keepalive, portico max_idle)
ORIGIN_PORT=${ORIGIN_PORT:-19000}
NGINX_PORT=${NGINX_PORT:-19080}
HAPROXY_PORT=${HAPROXY_PORT:-19081}
PORTICO_PORT=${PORTICO_PORT:-19082}
PORTICO_FULL_PORT=${PORTICO_FULL_PORT:-19083}
PORTICO_AUTH_PORT=${PORTICO_AUTH_PORT:-19085}
PORTICO_REDIS_PORT=${PORTICO_REDIS_PORT:-19086}
PORTICO_PGO_PORT=${PORTICO_PGO_PORT:-19087}
REDIS_PORT=${REDIS_PORT:-19379}
REDIS_MODE=${REDIS_MODE:-exact}        # portico-redis's limit: exact | reconcile
NGINX_TLS_PORT=${NGINX_TLS_PORT:-19095}
HAPROXY_TLS_PORT=${HAPROXY_TLS_PORT:-19096}
PORTICO_TLS_PORT=${PORTICO_TLS_PORT:-19097}
PORTICO_FULL_TLS_PORT=${PORTICO_FULL_TLS_PORT:-19098}
PORTICO_PGO_TLS_PORT=${PORTICO_PGO_TLS_PORT:-19099}
PORTICO_ADMIN_PORT=${PORTICO_ADMIN_PORT:-19084}
NGINX_H2_PORT=${NGINX_H2_PORT:-19090}
HAPROXY_H2_PORT=${HAPROXY_H2_PORT:-19091}
PORTICO_BIN=${PORTICO_BIN:-$REPO/target/release/portico}
PORTICO_PGO_BIN=${PORTICO_PGO_BIN:-$REPO/target/pgo/portico} # scripts/build-pgo.sh's output
BUILD=${BUILD:-1}                      # 0: don't build (use PORTICO_BIN and PORTICO_PGO_BIN as they are)
READY_TIMEOUT=${READY_TIMEOUT:-20}     # seconds to wait for a server to answer
BUILD_TIMEOUT=${BUILD_TIMEOUT:-3600}
RESULTS_DIR=${RESULTS_DIR:-$HERE/results}
KEEP_TMP=${KEEP_TMP:-0}
RESTART=${RESTART:-run}                # run: restart the measured server before each run; never: keep it

ALL_SCENARIOS="small50 small1 small500 64k 1m close h2 tls tlsnew h2tls"
ALL_PROXIES="direct nginx haproxy portico portico-pgo portico-full portico-auth portico-redis"

die() { echo "run.sh: $*" >&2; exit 1; }
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
is_uint "$ROUNDS" && ((ROUNDS >= 1 && ROUNDS <= 100)) || die "ROUNDS must be 1..100"
is_uint "$DURATION" && ((DURATION >= 1 && DURATION <= 3600)) || die "DURATION must be 1..3600 (seconds)"
is_uint "$WARMUP" && ((WARMUP <= 600)) || die "WARMUP must be 0..600 (seconds)"
for v in WRK_THREADS H2_CONNS H2_STREAMS UPSTREAM_POOL READY_TIMEOUT PROXY_CORE LOAD_CORE; do
    is_uint "${!v}" || die "$v must be a non-negative integer"
done
[[ $ACCESS_LOG == off || $ACCESS_LOG == json ]] || die "ACCESS_LOG must be off or json"
[[ $RESTART == run || $RESTART == never ]] || die "RESTART must be run or never"
[[ $REDIS_MODE == exact || $REDIS_MODE == reconcile ]] || die "REDIS_MODE must be exact or reconcile"

IFS=, read -r -a SCENS <<<"$SCENARIOS"
IFS=, read -r -a PEERS <<<"$PROXIES"
((${#SCENS[@]} > 0)) || die "SCENARIOS is empty"
((${#PEERS[@]} > 0)) || die "PROXIES is empty"
for s in "${SCENS[@]}"; do [[ " $ALL_SCENARIOS " == *" $s "* ]] || die "unknown scenario '$s' (known: $ALL_SCENARIOS)"; done
for p in "${PEERS[@]}"; do [[ " $ALL_PROXIES " == *" $p "* ]] || die "unknown proxy '$p' (known: $ALL_PROXIES)"; done
want() { [[ ",$PROXIES," == *",$1,"* ]]; }
want_portico() { [[ ",$PROXIES," == *",portico"* ]]; }
# Every request of every peer carries an API key (only portico-auth and
# portico-redis check it), so that all peers serve the same request.
API_KEY_HEADER="X-API-Key: bench-key"
want_scen() { [[ ",$SCENARIOS," == *",$1,"* ]]; }

# Scenario table: tool path connections extra-header description
scen_tool() { [[ $1 == h2 || $1 == h2tls ]] && echo h2load || echo wrk; }
is_tls() { [[ $1 == tls || $1 == tlsnew || $1 == h2tls ]]; }
is_h2() { [[ $1 == h2 || $1 == h2tls ]]; }
scen_path() { case $1 in 64k) echo /64k ;; 1m) echo /1m ;; *) echo /small ;; esac; }
scen_conns() { case $1 in small1) echo 1 ;; small500) echo 500 ;; h2 | h2tls) echo "$H2_CONNS" ;; *) echo 50 ;; esac; }
scen_body() { case $1 in 64k) echo 65536 ;; 1m) echo 1048576 ;; *) echo 13 ;; esac; }
scen_desc() {
    case $1 in
    small50) echo "small GET, 50 keep-alive connections" ;;
    small1) echo "small GET, 1 keep-alive connection" ;;
    small500) echo "small GET, 500 keep-alive connections" ;;
    64k) echo "64 KiB GET, 50 keep-alive connections" ;;
    1m) echo "1 MiB GET, 50 keep-alive connections" ;;
    close) echo "new connection per request (Connection: close), 50 connections" ;;
    h2) echo "HTTP/2 cleartext (h2c prior knowledge), $H2_CONNS connections x $H2_STREAMS streams" ;;
    tls) echo "HTTPS small GET, 50 keep-alive connections (TLS 1.3, ECDSA P-256)" ;;
    tlsnew) echo "HTTPS, a full TLS handshake per request (Connection: close), 50 connections" ;;
    h2tls) echo "HTTP/2 over TLS (ALPN h2), $H2_CONNS connections x $H2_STREAMS streams" ;;
    esac
}
scen_cmd() { # human-readable load command
    local s=$1
    case $s in
    h2 | h2tls) echo "h2load -t1 -c$H2_CONNS -m$H2_STREAMS -D$DURATION$([[ $s == h2tls ]] && echo ' https://...')" ;;
    close | tlsnew) echo "wrk -t$WRK_THREADS -c50 -d${DURATION}s --latency -H 'Connection: close'$([[ $s == tlsnew ]] && echo ' https://...')" ;;
    tls) echo "wrk -t$WRK_THREADS -c50 -d${DURATION}s --latency https://..." ;;
    *) echo "wrk -t$WRK_THREADS -c$(scen_conns "$s") -d${DURATION}s --latency" ;;
    esac
}

# ----------------------------------------------------------------- install --
need_root_install() {
    local missing=() pkgs=()
    command -v nginx >/dev/null || command -v /usr/sbin/nginx >/dev/null || missing+=(nginx)
    command -v haproxy >/dev/null || command -v /usr/sbin/haproxy >/dev/null || missing+=(haproxy)
    command -v wrk >/dev/null || missing+=(wrk)
    command -v h2load >/dev/null || missing+=(h2load)
    command -v gcc >/dev/null || missing+=(gcc)
    command -v curl >/dev/null || missing+=(curl)
    command -v openssl >/dev/null || missing+=(openssl)
    command -v taskset >/dev/null || missing+=(taskset)
    command -v pgrep >/dev/null || missing+=(pgrep)
    ((${#missing[@]} == 0)) && return 0
    [[ $(id -u) == 0 ]] || die "missing: ${missing[*]}; run as root or install them"
    log "installing: ${missing[*]}"
    for m in "${missing[@]}"; do
        case $m in
        nginx) ;; # handled below (nginx-light or nginx)
        h2load) pkgs+=(nghttp2-client) ;;
        taskset) pkgs+=(util-linux) ;;
        pgrep) pkgs+=(procps) ;;
        *) pkgs+=("$m") ;;
        esac
    done
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 apt-get update -qq
    if ((${#pkgs[@]} > 0)); then
        timeout 900 apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
    fi
    if [[ " ${missing[*]} " == *" nginx "* ]]; then
        timeout 900 apt-get install -y -qq --no-install-recommends nginx-light >/dev/null 2>&1 ||
            timeout 900 apt-get install -y -qq --no-install-recommends nginx >/dev/null
    fi
}
need_root_install
export PATH="$PATH:/usr/sbin:/sbin"
CLK_TCK=$(getconf CLK_TCK)

# ----------------------------------------------------- processes & cleanup --
T=$(mktemp -d /tmp/portico-bench.XXXXXX)
declare -A PID=()   # name -> pid of each server we started (each killed on exit)

alive() { # running and not a zombie
    local st
    st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ ${st%% *} != Z ]]
}
stop_pid() {
    local pid=$1 kids i
    kids=$(pgrep -P "$pid" 2>/dev/null || true)
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do alive "$pid" || break; sleep 0.1; done
    alive "$pid" && kill -KILL "$pid" 2>/dev/null || true
    for k in $kids; do alive "$k" && kill -KILL "$k" 2>/dev/null || true; done
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local name
    [[ -n ${LOAD_PID:-} ]] && stop_pid "$LOAD_PID"
    for name in "${!PID[@]}"; do stop_pid "${PID[$name]}"; done
    if [[ $KEEP_TMP == 1 || $rc != 0 ]]; then
        echo "run.sh: temp dir kept: $T" >&2
    else
        rm -rf "$T"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_in_use() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

wait_http() { # port path -> 0 when it answers 200
    local port=$1 path=${2:-/small} i code
    for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
        code=$(curl -s -m 2 -H "$API_KEY_HEADER" -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port$path" 2>/dev/null || true)
        [[ $code == 200 ]] && return 0
        sleep 0.1
    done
    return 1
}

# ----------------------------------------------------------------- configs --
write_nginx_conf() {
    local d=$T/nginx
    mkdir -p "$d/tmp"
    local alog="access_log off;"
    if [[ $ACCESS_LOG == json ]]; then
        alog="log_format bench escape=json '{\"time\":\"\$time_iso8601\",\"client\":\"\$remote_addr\",\"method\":\"\$request_method\",\"uri\":\"\$request_uri\",\"status\":\$status,\"bytes\":\$body_bytes_sent,\"duration\":\$request_time,\"upstream_time\":\"\$upstream_response_time\"}';
    access_log $d/access.log bench;"
    fi
    cat >"$d/nginx.conf" <<EOF
user root;
worker_processes 1;
daemon off;
master_process on;
pid $d/nginx.pid;
error_log $d/error.log warn;
worker_rlimit_nofile 16384;
events {
    worker_connections 8192;
}
http {
    $alog
    client_body_temp_path $d/tmp/body;
    proxy_temp_path $d/tmp/proxy;
    fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi;
    scgi_temp_path $d/tmp/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    upstream origin {
        server 127.0.0.1:$ORIGIN_PORT;
        keepalive $UPSTREAM_POOL;
        keepalive_requests 10000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
    server {
        listen 127.0.0.1:$NGINX_H2_PORT http2;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
    server {
        listen 127.0.0.1:$NGINX_TLS_PORT ssl http2;
        ssl_certificate $T/tls/cert.pem;
        ssl_certificate_key $T/tls/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
}

write_haproxy_conf() {
    local d=$T/haproxy glog="" dlog=""
    mkdir -p "$d"
    if [[ $ACCESS_LOG == json ]]; then
        glog="    log stdout format raw local0"
        dlog="    log global
    log-format '{\"time\":\"%t\",\"client\":\"%ci\",\"method\":\"%HM\",\"uri\":\"%HU\",\"status\":%ST,\"bytes\":%B,\"duration_ms\":%Ta,\"upstream_ms\":%Tr}'"
    fi
    cat >"$d/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 8000
$glog

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    timeout http-keep-alive 75s
    http-reuse always
$dlog

frontend bench
    bind 127.0.0.1:$HAPROXY_PORT
    bind 127.0.0.1:$HAPROXY_H2_PORT proto h2
    bind 127.0.0.1:$HAPROXY_TLS_PORT ssl crt $T/tls/combined.pem alpn h2,http/1.1
    default_backend origin

backend origin
    server origin 127.0.0.1:$ORIGIN_PORT
EOF
}

# portico: the bare proxy. portico-pgo: the same, run by the profile-guided
# build (scripts/build-pgo.sh). portico-full: the same with what a production
# gateway turns on: a JSON access log to a file, active health checks,
# outlier detection, a retry policy, the admin API (metrics are always
# counted) and trace context propagation.
# portico-auth: the bare proxy plus API-key authentication and a local rate
# limit keyed by consumer on every request (set high enough never to refuse:
# the cost of deciding is what is measured). portico-redis: the same limit in
# Redis, one atomic script per request.
write_portico_conf() { # name
    local name=$1 d=$T/$1 al="{ enabled: false }" port tls_port extra="" retry="" api=""
    port=$(h1_port "$name")
    tls_port=$(tls_port "$name")
    mkdir -p "$d"
    [[ $ACCESS_LOG == json ]] && al="{ enabled: true, target: \"$d/access.log\" }"
    if [[ $name == portico-full ]]; then
        al="{ enabled: true, target: \"$d/access.log\" }"
        extra="    health_check: { type: http, path: /small, interval: 1s }
    outlier_detection: { consecutive_5xx: 5 }"
        retry="    retry: { attempts: 2 }"
    fi
    if [[ $name == portico-auth || $name == portico-redis ]]; then
        local store=local
        tls_port=$((port + 100))
        if [[ $name == portico-redis ]]; then
            store=redis
            printf 'redis: { urls: ["redis://127.0.0.1:%s"] }\n' "$REDIS_PORT" >"$d/redis.yaml"
        fi
        retry="    auth: { providers: [keys] }
    rate_limit: [per-consumer]"
        api="consumers:
  - { name: bench, api_keys: [bench-key] }
auth_providers:
  keys: { api_key: {} }
rate_limits:
  per-consumer: { key: consumer, rate: 1000000000/s, store: $store$([[ $store == redis ]] && echo ", mode: $REDIS_MODE") }
$(cat "$d/redis.yaml" 2>/dev/null || true)"
    fi
    cat >"$d/portico.yaml" <<EOF
workers: 1
access_log: $al
listeners:
  - { name: bench, address: "127.0.0.1:$port" }
  - name: bench-tls
    address: "127.0.0.1:$tls_port"
    tls: { certificates: [{ cert: "$T/tls/cert.pem", key: "$T/tls/key.pem" }] }
upstreams:
  origin:
    endpoints: ["127.0.0.1:$ORIGIN_PORT"]
    pool: { max_idle: $UPSTREAM_POOL }
$extra
$api
routes:
  - name: all
    match: { prefix: / }
    upstream: origin
$retry
EOF
    if [[ $name == portico-full ]]; then
        printf 'admin: { address: "127.0.0.1:%s" }\n' "$PORTICO_ADMIN_PORT" >>"$d/portico.yaml"
    fi
}

# ------------------------------------------------------------ start/stop --
h1_port() { case $1 in direct) echo "$ORIGIN_PORT" ;; nginx) echo "$NGINX_PORT" ;; haproxy) echo "$HAPROXY_PORT" ;; portico) echo "$PORTICO_PORT" ;; portico-pgo) echo "$PORTICO_PGO_PORT" ;; portico-full) echo "$PORTICO_FULL_PORT" ;; portico-auth) echo "$PORTICO_AUTH_PORT" ;; portico-redis) echo "$PORTICO_REDIS_PORT" ;; esac; }
tls_port() { case $1 in nginx) echo "$NGINX_TLS_PORT" ;; haproxy) echo "$HAPROXY_TLS_PORT" ;; portico) echo "$PORTICO_TLS_PORT" ;; portico-pgo) echo "$PORTICO_PGO_TLS_PORT" ;; portico-full) echo "$PORTICO_FULL_TLS_PORT" ;; *) echo "" ;; esac; }
h2_port() { case $1 in nginx) echo "$NGINX_H2_PORT" ;; haproxy) echo "$HAPROXY_H2_PORT" ;; portico) echo "$PORTICO_PORT" ;; portico-pgo) echo "$PORTICO_PGO_PORT" ;; portico-full) echo "$PORTICO_FULL_PORT" ;; portico-auth) echo "$PORTICO_AUTH_PORT" ;; portico-redis) echo "$PORTICO_REDIS_PORT" ;; *) echo "" ;; esac; }
proc_of() { [[ $1 == direct ]] && echo origin || echo "$1"; } # whose CPU/RSS a row reports

start_server() { # name
    local name=$1 pid
    case $name in
    origin)
        taskset -c "$LOAD_CORE" "$T/origin" "$ORIGIN_PORT" >"$T/origin.log" 2>&1 &
        pid=$! ;;
    nginx)
        write_nginx_conf
        taskset -c "$PROXY_CORE" nginx -p "$T/nginx" -e "$T/nginx/error.log" -c "$T/nginx/nginx.conf" \
            >"$T/nginx/stdout.log" 2>&1 &
        pid=$! ;;
    haproxy)
        write_haproxy_conf
        haproxy -c -q -f "$T/haproxy/haproxy.cfg" || die "haproxy config check failed"
        taskset -c "$PROXY_CORE" haproxy -db -f "$T/haproxy/haproxy.cfg" \
            >>"$T/haproxy/access.log" 2>"$T/haproxy/stderr.log" &
        pid=$! ;;
    redis)
        taskset -c "$LOAD_CORE" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" \
            --appendonly no >"$T/redis.log" 2>&1 &
        pid=$! ;;
    portico | portico-pgo | portico-full | portico-auth | portico-redis)
        write_portico_conf "$name"
        local bin=$PORTICO_BIN
        [[ $name == portico-pgo ]] && bin=$PORTICO_PGO_BIN
        taskset -c "$PROXY_CORE" "$bin" run -c "$T/$name/portico.yaml" \
            >"$T/$name/stdout.log" 2>"$T/$name/stderr.log" &
        pid=$! ;;
    esac
    PID[$name]=$pid
    local port
    if [[ $name == redis ]]; then
        local j
        for ((j = 0; j < READY_TIMEOUT * 10; j++)); do
            redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && return 0
            sleep 0.1
        done
        return 1
    fi
    if [[ $name == origin ]]; then port=$ORIGIN_PORT; else port=$(h1_port "$name"); fi
    if [[ $name == portico* ]]; then # documented readiness line, then the port
        local i
        for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
            grep -q listening "$T/$name/stderr.log" 2>/dev/null && break
            alive "$pid" || break
            sleep 0.1
        done
    fi
    if ! alive "$pid" || ! wait_http "$port" /small; then
        echo "--- $name did not become ready; its logs:" >&2
        tail -n 20 "$T/$name"*.log "$T/$name"/*.log 2>/dev/null >&2 || true
        return 1
    fi
    return 0
}

stop_server() { # name
    [[ -n ${PID[$1]:-} ]] || return 0
    stop_pid "${PID[$1]}"
    unset "PID[$1]"
}

sanity_check() { # peer -> sets OK_H1[peer], OK_H2[peer]
    local p=$1 port path want got ok=1
    port=$(h1_port "$p")
    for path in /small:13 /64k:65536 /1m:1048576; do
        want=${path#*:}
        got=$(curl -s -m 10 -H "$API_KEY_HEADER" -o /dev/null -w '%{http_code} %{size_download}' "http://127.0.0.1:$port${path%%:*}" || true)
        if [[ $got != "200 $want" ]]; then
            log "SANITY FAIL: $p GET ${path%%:*} -> '$got' (want '200 $want')"
            ok=0
        fi
    done
    got=$(curl -s -m 10 -H "$API_KEY_HEADER" -o /dev/null -w '%{http_code}' -H 'Connection: close' "http://127.0.0.1:$port/small" || true)
    [[ $got == 200 ]] || { log "SANITY FAIL: $p GET /small with Connection: close -> '$got'"; ok=0; }
    OK_H1[$p]=$ok
    OK_H2[$p]=0
    OK_TLS[$p]=0
    if [[ $p != direct ]] && { want_scen tls || want_scen tlsnew || want_scen h2tls; }; then
        got=$(curl -s -m 10 -H "$API_KEY_HEADER" --cacert "$T/tls/cert.pem" -o /dev/null -w '%{http_code} %{size_download}' "https://localhost:$(tls_port "$p")/small" || true)
        if [[ $got == "200 13" ]]; then OK_TLS[$p]=1; else log "SANITY FAIL: $p https GET /small -> '$got'"; fi
    fi
    if [[ $p != direct ]] && want_scen h2; then
        local out
        out=$(timeout 20 h2load -n 40 -c 2 -m 4 -H "$API_KEY_HEADER" "http://127.0.0.1:$(h2_port "$p")/small" 2>&1 || true)
        if grep -q 'status codes: 40 2xx' <<<"$out"; then
            OK_H2[$p]=1
        else
            log "SANITY FAIL: $p h2c: $(grep -E '^(requests|status codes):' <<<"$out" | tr '\n' ' ')"
        fi
    fi
}

# ------------------------------------------------------------ measurement --
tree_pids() { echo "$1"; pgrep -P "$1" 2>/dev/null || true; }
cpu_ticks() { # sum utime+stime over the pids given
    local total=0 pid v
    for pid in "$@"; do
        v=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12 + $13}') || v=0
        total=$((total + ${v:-0}))
    done
    echo "$total"
}
core_ticks() { # "total busy" ticks of one core, from /proc/stat
    awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= NF; i++) t += $i; print t, t - $5 - $6 }' /proc/stat
}
reset_hwm() { local pid; for pid in "$@"; do echo 5 >"/proc/$pid/clear_refs" 2>/dev/null || true; done; }
peak_rss_kb() { # largest VmHWM among the pids (for nginx: the worker; the idle master shares its pages)
    local max=0 pid v
    for pid in "$@"; do
        v=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null) || v=0
        ((${v:-0} > max)) && max=$v
    done
    echo "$max"
}

# Run a load tool in the background and wait for it (so a signal to this script
# is handled at once, and cleanup stops the tool too).
LOAD_PID=
run_tool() { # outfile secs cmd...
    local out=$1 secs=$2 rc=0
    shift 2
    timeout -k 5 $((secs + 60)) taskset -c "$LOAD_CORE" "$@" >"$out" 2>&1 &
    LOAD_PID=$!
    wait "$LOAD_PID" || rc=$?
    LOAD_PID=
    return "$rc"
}

# Run the load; prints "rps p50_ms p99_ms requests errors" or returns 1.
# Must not run in a subshell (run_tool tracks the tool's pid for cleanup).
load_run() { # scenario port seconds outfile
    local s=$1 port=$2 secs=$3 out=$4 url
    url="http://127.0.0.1:$port$(scen_path "$s")"
    is_tls "$s" && url="https://localhost:$port$(scen_path "$s")"
    if is_h2 "$s"; then
        rm -f "$out.lat"
        run_tool "$out" "$secs" h2load -t1 -c "$H2_CONNS" -m "$H2_STREAMS" -D "$secs" -H "$API_KEY_HEADER" \
            --log-file="$out.lat" "$url" || return 1
        local lat
        lat=$(awk -F'\t' '$2 >= 200 && $2 < 400 {print $3}' "$out.lat" | sort -n |
            awk '{v[NR] = $1} END {
                if (NR == 0) { print "nan nan"; exit }
                i50 = int(NR * 0.50); if (i50 < 1) i50 = 1
                i99 = int(NR * 0.99); if (i99 < 1) i99 = 1
                printf "%.4f %.4f\n", v[i50] / 1000, v[i99] / 1000 }')
        rm -f "$out.lat"
        awk -v lat="$lat" '
            /^finished in/ { rps = $4 + 0 }
            /^requests:/ { done = $6 + 0; failed = $10 + 0 }
            /^status codes:/ { bad = $7 + $9 } # 4xx + 5xx
            END {
                if (rps == "") exit 1
                split(lat, l, " ")
                printf "%s %s %s %d %d\n", rps, l[1], l[2], done, failed + bad
            }' "$out"
    else
        local hdr=()
        [[ $s == close || $s == tlsnew ]] && hdr=(-H 'Connection: close')
        run_tool "$out" "$secs" wrk -t "$WRK_THREADS" -c "$(scen_conns "$s")" -d "${secs}s" \
            --latency -H "$API_KEY_HEADER" "${hdr[@]}" "$url" || return 1
        awk '
            function ms(s,   n) {
                n = s + 0
                if (s ~ /us$/) return n / 1000
                if (s ~ /ms$/) return n
                if (s ~ /m$/) return n * 60000
                if (s ~ /h$/) return n * 3600000
                if (s ~ /s$/) return n * 1000
                return n
            }
            /Requests\/sec:/ { rps = $2 }
            / requests in / { n = $1 }
            /^ +50%/ { p50 = ms($2) }
            /^ +99%/ { p99 = ms($2) }
            /Non-2xx or 3xx responses:/ { err += $NF }
            /Socket errors:/ { gsub(",", ""); err += $4 + $6 + $8 + $10 }
            END {
                if (rps == "") exit 1
                printf "%s %.4f %.4f %d %d\n", rps, p50, p99, n, err
            }' "$out"
    fi
}

RAW=$T/raw.tsv
: >"$RAW"
run_one() { # round scenario peer
    local r=$1 s=$2 p=$3 port pid res
    local who
    who=$(proc_of "$p")
    if is_tls "$s"; then
        port=$(tls_port "$p")
    elif [[ $s == h2 ]]; then
        port=$(h2_port "$p")
    else
        port=$(h1_port "$p")
    fi
    if [[ $RESTART == run ]]; then # a fresh process per run: peak RSS is this run's own
        stop_server "$who"
        if ! start_server "$who"; then
            log "round $r $s $p: $who failed to restart"
            printf '%s\t%s\t%s\t\t\t\t\t\t\t\tfail\n' "$r" "$s" "$p" >>"$RAW"
            return 0
        fi
    fi
    pid=${PID[$who]:-0}
    if ! alive "$pid"; then
        log "round $r $s $p: $who is not running"
        printf '%s\t%s\t%s\t\t\t\t\t\t\t\tdead\n' "$r" "$s" "$p" >>"$RAW"
        return 0
    fi
    local f # access logs grow fast: keep only the current run's
    for f in "$T"/*/access.log; do
        if [[ -f $f ]]; then : >"$f"; fi
    done
    if ((WARMUP > 0)); then load_run "$s" "$port" "$WARMUP" "$T/warmup.out" >/dev/null || true; fi
    local pids t0 t1 ticks
    pids=$(tree_pids "$pid")
    # shellcheck disable=SC2086
    reset_hwm $pids
    # shellcheck disable=SC2086
    t0=$(cpu_ticks $pids)
    local c0 c1
    c0=$(core_ticks "$PROXY_CORE")
    local out=$T/runs/r$r-$s-$p.out
    mkdir -p "$T/runs"
    if ! load_run "$s" "$port" "$DURATION" "$out" >"$T/res"; then
        log "round $r $s $p: load run failed: $(tail -n 3 "$out" 2>/dev/null | tr '\n' ' ')"
        printf '%s\t%s\t%s\t\t\t\t\t\t\t\tfail\n' "$r" "$s" "$p" >>"$RAW"
        return 0
    fi
    # shellcheck disable=SC2086
    t1=$(cpu_ticks $pids)
    c1=$(core_ticks "$PROXY_CORE")
    # shellcheck disable=SC2086
    local rss
    rss=$(peak_rss_kb $pids)
    ticks=$((t1 - t0))
    local rps p50 p99 n err
    read -r rps p50 p99 n err <"$T/res"
    local cpu
    cpu=$(awk -v t="$ticks" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t / hz }')
    # CPU time on the proxy core used by anything but the proxy: how disturbed the run was
    local other
    other=$(awk -v a="$c0" -v b="$c1" -v own="$ticks" -v direct="$([[ $p == direct ]] && echo 1 || echo 0)" 'BEGIN {
        split(a, x, " "); split(b, y, " "); tot = y[1] - x[1]; busy = y[2] - x[2]
        if (!direct) busy -= own
        if (tot <= 0) { print 0; exit }
        v = 100 * busy / tot; if (v < 0) v = 0; printf "%.0f", v }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\tok\t%s\n' "$r" "$s" "$p" "$rps" "$p50" "$p99" "$n" "$cpu" "$rss" "$err" "$other" >>"$RAW"
    log "$(printf 'round %d %-8s %-8s %10.0f req/s  p50 %7.3f ms  p99 %7.3f ms  cpu %5.2f s  rss %6d kB  errors %d  other load on core %d: %d%%' \
        "$r" "$s" "$p" "$rps" "$p50" "$p99" "$cpu" "$rss" "$err" "$PROXY_CORE" "$other")"
}

# ------------------------------------------------------------------ report --
report() {
    local scen_list="${SCENS[*]}" peer_list="${PEERS[*]}"
    awk -F'\t' -v scens="$scen_list" -v peers="$peer_list" \
        -v d_small50="$(scen_desc small50)" -v d_small1="$(scen_desc small1)" -v d_small500="$(scen_desc small500)" \
        -v d_64k="$(scen_desc 64k)" -v d_1m="$(scen_desc 1m)" -v d_close="$(scen_desc close)" -v d_h2="$(scen_desc h2)" \
        -v d_tls="$(scen_desc tls)" -v d_tlsnew="$(scen_desc tlsnew)" -v d_h2tls="$(scen_desc h2tls)" \
        -v c_tls="$(scen_cmd tls)" -v c_tlsnew="$(scen_cmd tlsnew)" -v c_h2tls="$(scen_cmd h2tls)" \
        -v c_small50="$(scen_cmd small50)" -v c_small1="$(scen_cmd small1)" -v c_small500="$(scen_cmd small500)" \
        -v c_64k="$(scen_cmd 64k)" -v c_1m="$(scen_cmd 1m)" -v c_close="$(scen_cmd close)" -v c_h2="$(scen_cmd h2)" '
    function sortn(a, n,   i, j, t) { for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t } }
    function median(a, n) { sortn(a, n); return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
    function k(x) { if (x >= 1e6) return sprintf("%.2fM", x / 1e6); if (x >= 1e4) return sprintf("%.1fk", x / 1e3); if (x >= 1e3) return sprintf("%.2fk", x / 1e3); return sprintf("%.0f", x) }
    function fms(x) { if (x < 1) return sprintf("%.3f ms", x); if (x < 10) return sprintf("%.2f ms", x); return sprintf("%.1f ms", x) }
    {
        key = $2 SUBSEP $3
        if ($11 != "ok") { bad[key]++; why[key] = $11; next }
        n = ++cnt[key]
        rps[key, n] = $4; p50[key, n] = $5; p99[key, n] = $6
        rr[key, $1] = $4; pr[key, $1] = $6; if ($1 > rounds) rounds = $1
        rpc[key, n] = ($8 > 0) ? $7 / $8 : -1
        if ($9 > rss[key]) rss[key] = $9
        no++; ot[no] = $12 + 0; if ($12 + 0 > omax) omax = $12 + 0
        err[key] += $10
    }
    END {
        desc["small50"] = d_small50; desc["small1"] = d_small1; desc["small500"] = d_small500
        desc["64k"] = d_64k; desc["1m"] = d_1m; desc["close"] = d_close; desc["h2"] = d_h2; desc["tls"] = d_tls; desc["tlsnew"] = d_tlsnew; desc["h2tls"] = d_h2tls
        cmd["small50"] = c_small50; cmd["small1"] = c_small1; cmd["small500"] = c_small500
        cmd["64k"] = c_64k; cmd["1m"] = c_1m; cmd["close"] = c_close; cmd["h2"] = c_h2; cmd["tls"] = c_tls; cmd["tlsnew"] = c_tlsnew; cmd["h2tls"] = c_h2tls
        body["64k"] = 65536; body["1m"] = 1048576
        ns = split(scens, S, " "); np = split(peers, P, " ")
        for (si = 1; si <= ns; si++) {
            s = S[si]
            printf "\n### %s\n\n`%s`\n\n", desc[s], cmd[s]
            print "| peer | req/s median (min–max) | p50 | p99 | req per CPU-s | peak RSS | vs NGINX | paired req/s | paired p99 | errors |"
            print "|---|---|---|---|---|---|---|---|---|---|"
            base = ""
            kn = s SUBSEP "nginx"
            if (cnt[kn] > 0) { for (i = 1; i <= cnt[kn]; i++) t[i] = rps[kn, i]; base = median(t, cnt[kn]) }
            tp = ""
            for (pi = 1; pi <= np; pi++) {
                p = P[pi]; key = s SUBSEP p
                if ((s == "h2" || s == "tls" || s == "tlsnew" || s == "h2tls") && p == "direct") continue
                n = cnt[key] + 0
                if (n == 0) {
                    printf "| %s | – (%s) | | | | | | | | |\n", p, (key in why) ? why[key] : "not run"
                    continue
                }
                delete a; for (i = 1; i <= n; i++) a[i] = rps[key, i]
                med = median(a, n); mn = a[1]; mx = a[n]
                delete b; for (i = 1; i <= n; i++) b[i] = p50[key, i]; m50 = median(b, n)
                delete c; for (i = 1; i <= n; i++) c[i] = p99[key, i]; m99 = median(c, n)
                delete e; m = 0; for (i = 1; i <= n; i++) if (rpc[key, i] >= 0) e[++m] = rpc[key, i]
                mrpc = (m > 0) ? k(median(e, m)) : "–"
                ratio = (base != "" && base > 0) ? sprintf("%.2f×", med / base) : "–"
                # Paired: the ratio to NGINX within each round both ran in,
                # which cancels the drift of the machine between rounds.
                delete q; delete w; m = 0; lower = 0
                for (r = 1; p != "nginx" && r <= rounds; r++)
                    if ((key, r) in rr && (kn, r) in rr && rr[kn, r] > 0 && pr[kn, r] > 0) {
                        m++; q[m] = rr[key, r] / rr[kn, r]; w[m] = pr[key, r] / pr[kn, r]
                        if (pr[key, r] <= pr[kn, r]) lower++
                    }
                paired = "–"; pairedp99 = "–"
                if (m > 0) { paired = sprintf("%.2f×", median(q, m)); pairedp99 = sprintf("%.2f× (≤ in %d/%d)", median(w, m), lower, m) }
                note = (bad[key] > 0) ? sprintf(" (%d runs %s)", bad[key], why[key]) : ""
                printf "| %s%s | %s (%s–%s) | %s | %s | %s | %.1f MiB | %s | %s | %s | %d%s |\n", \
                    p, (p == "direct" ? "¹" : ""), k(med), k(mn), k(mx), fms(m50), fms(m99), mrpc, rss[key] / 1024, ratio, paired, pairedp99, err[key], note
                if (s in body) tp = tp sprintf("%s%s %.2f GB/s", (tp == "" ? "" : ", "), p, med * body[s] / 1e9)
            }
            if (tp != "") printf "\nBody throughput (median): %s.\n", tp
        }
        printf "\nvs NGINX: the ratio of the medians. Paired: the median over rounds of the ratio to NGINX in the same round, and in how many rounds the p99 was NGINX'"'"'s or lower.\n"
        printf "\n¹ direct: the origin itself (on the load core); its CPU and RSS are the origin'"'"'s.\n"
        if (no > 0) printf "\nOther processes'"'"' share of the proxy core during the runs: median %d%%, max %d%% (above a few %% the run was disturbed).\n", median(ot, no), omax
    }' "$RAW"
}

# -------------------------------------------------------------------- main --
log "temp dir: $T"
gcc -O2 -Wall -o "$T/origin" "$HERE/origin.c"
# One ECDSA P-256 certificate for localhost, shared by every TLS peer.
mkdir -p "$T/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$T/tls/key.pem" -out "$T/tls/cert.pem" 2>/dev/null || die "openssl cannot make the test certificate"
cat "$T/tls/cert.pem" "$T/tls/key.pem" >"$T/tls/combined.pem"

if want_portico; then
    if [[ $BUILD == 1 ]]; then
        log "cargo build --release (portico)"
        (cd "$REPO" && timeout "$BUILD_TIMEOUT" cargo build --release) || die "cargo build --release failed"
        if want portico-pgo; then
            log "scripts/build-pgo.sh (portico-pgo)"
            PGO_OUT=$PORTICO_PGO_BIN timeout "$BUILD_TIMEOUT" "$REPO/scripts/build-pgo.sh" ||
                die "scripts/build-pgo.sh failed"
        fi
    fi
    [[ -x $PORTICO_BIN ]] || die "portico binary not found: $PORTICO_BIN"
    want portico-pgo && { [[ -x $PORTICO_PGO_BIN ]] || die "portico-pgo binary not found: $PORTICO_PGO_BIN (scripts/build-pgo.sh)"; }
fi

ports=("$ORIGIN_PORT")
want nginx && ports+=("$NGINX_PORT" "$NGINX_H2_PORT" "$NGINX_TLS_PORT")
want haproxy && ports+=("$HAPROXY_PORT" "$HAPROXY_H2_PORT" "$HAPROXY_TLS_PORT")
want portico && ports+=("$PORTICO_PORT" "$PORTICO_TLS_PORT")
want portico-pgo && ports+=("$PORTICO_PGO_PORT" "$PORTICO_PGO_TLS_PORT")
want portico-full && ports+=("$PORTICO_FULL_PORT" "$PORTICO_ADMIN_PORT" "$PORTICO_FULL_TLS_PORT")
want portico-auth && ports+=("$PORTICO_AUTH_PORT")
want portico-redis && ports+=("$PORTICO_REDIS_PORT" "$REDIS_PORT")
for port in "${ports[@]}"; do
    port_in_use "$port" && die "port $port is already in use on 127.0.0.1 (set *_PORT env vars)"
done

start_server origin || die "origin failed to start"
if want portico-redis; then
    command -v redis-server >/dev/null || die "portico-redis needs redis-server (apt-get install redis-server redis-tools)"
    start_server redis || die "redis-server failed to start"
fi
declare -A OK_H1=() OK_H2=() OK_TLS=()
for p in "${PEERS[@]}"; do
    if [[ $p != direct ]]; then
        if ! start_server "$p"; then
            log "$p failed to start; it is left out"
            OK_H1[$p]=0; OK_H2[$p]=0; OK_TLS[$p]=0
            continue
        fi
    fi
    sanity_check "$p"
done

ver() { "$@" 2>&1 | head -n 1 || true; }
VERSIONS="$(ver nginx -v | sed 's/.*: //'), $(ver haproxy -v | awk '{print "HAProxy", $3}'), $(ver wrk -v | awk '{print $1, $2}'), $(ver h2load --version)"
if want_portico; then VERSIONS+=", portico $(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo uncommitted)"; fi
log "versions: $VERSIONS"
log "plan: ${ROUNDS} rounds x [${SCENS[*]}] x [${PEERS[*]}], ${WARMUP}s warm-up + ${DURATION}s each"

np=${#PEERS[@]}
for ((r = 1; r <= ROUNDS; r++)); do
    for s in "${SCENS[@]}"; do
        for ((i = 0; i < np; i++)); do
            p=${PEERS[$(((i + r - 1) % np))]}
            if is_tls "$s"; then
                [[ $p == direct ]] && continue
                if [[ ${OK_TLS[$p]:-0} != 1 ]]; then printf '%s\t%s\t%s\t\t\t\t\t\t\t\tsanity-failed\n' "$r" "$s" "$p" >>"$RAW"; continue; fi
            elif [[ $s == h2 ]]; then
                [[ $p == direct ]] && continue
                if [[ ${OK_H2[$p]:-0} != 1 ]]; then printf '%s\t%s\t%s\t\t\t\t\t\t\t\tsanity-failed\n' "$r" "$s" "$p" >>"$RAW"; continue; fi
            elif [[ ${OK_H1[$p]:-0} != 1 ]]; then
                printf '%s\t%s\t%s\t\t\t\t\t\t\t\tsanity-failed\n' "$r" "$s" "$p" >>"$RAW"
                continue
            fi
            run_one "$r" "$s" "$p"
        done
    done
done

mkdir -p "$RESULTS_DIR"
stamp=$(date +%Y%m%d-%H%M%S)
md=$RESULTS_DIR/bench-$stamp.md
{
    echo "# Portico side-by-side benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "$(uname -sr), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at the end."
    echo "$VERSIONS."
    echo "Proxies pinned to core $PROXY_CORE with one worker; origin and load generator on core $LOAD_CORE."
    echo "$ROUNDS interleaved rounds x ${DURATION}s after a ${WARMUP}s warm-up; access logs: $ACCESS_LOG; upstream idle pool: $UPSTREAM_POOL;"
    if [[ $RESTART == run ]]; then
        echo "each server restarted before each run (so peak RSS is that run's)."
    else
        echo "servers kept running across runs (peak RSS includes memory kept from earlier runs)."
    fi
    report
} >"$md"
cp "$RAW" "$RESULTS_DIR/bench-$stamp.tsv"
cat "$md"
log "written: $md (raw: $RESULTS_DIR/bench-$stamp.tsv)"
