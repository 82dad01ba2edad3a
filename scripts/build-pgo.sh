#!/usr/bin/env bash
# Builds target/pgo/portico: the release build laid out by a profile of the
# gateway at work (profile-guided optimization). See docs/performance.md,
# "The profile-guided build".
#
#   1. a release build instrumented to count what runs (-Cprofile-generate);
#   2. that build serves the benchmark's scenarios for a few seconds each
#      (bench/run.sh, one round: HTTP/1.1 small and large, 1 to 500
#      connections, a connection per request, h2c, TLS, HTTP/2 over TLS; the
#      bare proxy, the production set-up and API keys with a rate limit);
#   3. the counts are merged (llvm-profdata from rustup's llvm-tools, which
#      matches rustc's LLVM) and the release build is made again with them
#      (-Cprofile-use): hot code together, cold code out of its way.
#
# Needs what bench/run.sh needs (it installs nginx, haproxy, wrk and h2load
# where missing) and rustup's llvm-tools component (added here when missing).
# Environment: PGO_FEATURES (cargo features, comma-separated), PGO_DIR (the
# work folder, default target/pgo), PGO_OUT (the binary, default
# PGO_DIR/portico), PGO_DURATION (seconds per training run, default 3).
# The training run's other settings are fixed here, whatever the caller's
# environment says.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
OUT=${PGO_DIR:-$REPO/target/pgo}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
BIN_OUT=${PGO_OUT:-$OUT/portico}
DURATION=${PGO_DURATION:-3}
FEATURES=${PGO_FEATURES:-}

die() { echo "build-pgo.sh: $*" >&2; exit 1; }
log() { echo "[$(date +%H:%M:%S)] build-pgo: $*" >&2; }

HOST=$(rustc -vV | sed -n 's/^host: //p')
PROFDATA="$(rustc --print sysroot)/lib/rustlib/$HOST/bin/llvm-profdata"
if [[ ! -x $PROFDATA ]]; then
    command -v rustup >/dev/null || die "llvm-profdata matching rustc is needed: install rustup's llvm-tools"
    log "rustup component add llvm-tools"
    rustup component add llvm-tools >&2 || die "cannot add rustup's llvm-tools"
    [[ -x $PROFDATA ]] || die "llvm-tools added but $PROFDATA is missing"
fi

# --target keeps RUSTFLAGS off build scripts and proc macros: only the
# gateway itself is instrumented, then optimized.
build() { # target-dir, rustflags
    (cd "$REPO" && CARGO_TARGET_DIR=$1 RUSTFLAGS="${RUSTFLAGS:-} $2" \
        cargo build --release --locked --target "$HOST" ${FEATURES:+--features "$FEATURES"} >&2) || die "cargo build failed ($2)"
}

rm -rf "$OUT/profiles"
mkdir -p "$OUT/profiles"
log "instrumented release build"
build "$OUT/gen" "-Cprofile-generate=$OUT/profiles"

log "training run (bench/run.sh, one round of ${DURATION}s per scenario)"
env -u WRK_THREADS -u H2_CONNS -u H2_STREAMS -u UPSTREAM_POOL \
    LLVM_PROFILE_FILE="$OUT/profiles/portico-%p.profraw" \
    PORTICO_BIN="$OUT/gen/$HOST/release/portico" BUILD=0 ROUNDS=1 WARMUP=0 \
    DURATION="$DURATION" PROXIES=portico,portico-full,portico-auth \
    SCENARIOS=small50,small1,small500,64k,1m,close,h2,tls,tlsnew,h2tls \
    ACCESS_LOG=off RESTART=run RESULTS_DIR="$OUT/training" "$REPO/bench/run.sh" >/dev/null ||
    die "the training run failed"
compgen -G "$OUT/profiles/*.profraw" >/dev/null || die "the training run wrote no profile"
"$PROFDATA" merge -o "$OUT/portico.profdata" "$OUT"/profiles/*.profraw

log "release build with the profile"
build "$OUT/use" "-Cprofile-use=$OUT/portico.profdata"
mkdir -p "$(dirname "$BIN_OUT")"
cp "$OUT/use/$HOST/release/portico" "$BIN_OUT"
log "built $BIN_OUT"
