#!/usr/bin/env bash
# The whole test suite. The shared rate-limit tests run a real Redis, so this
# installs Debian's redis-server and redis-tools first when they are missing,
# then runs `cargo test` (extra arguments are passed on).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get install -y redis-server redis-tools >/dev/null 2>&1 \
    || { $sudo apt-get update >/dev/null && $sudo apt-get install -y redis-server redis-tools; }
fi
exec cargo test "$@"
