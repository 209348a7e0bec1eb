#!/usr/bin/env bash
# Run every test of the workspace on a fresh Debian machine that has only the
# Rust toolchain: installs what is missing, builds the guest plugins, then
# runs `cargo test --workspace`. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*" >&2; }

need_apt=()
command -v sqlite3 >/dev/null 2>&1 || need_apt+=(sqlite3)
# Real PostgreSQL and Redis servers: the tests start their own on free
# loopback ports (tests/src/services.rs); the packages' services stay unused.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need_apt+=(postgresql)
{ command -v redis-server && command -v redis-cli; } >/dev/null 2>&1 || need_apt+=(redis-server)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

log "building guest plugins (wasm32-wasip2)"
bash tests/build-plugins.sh

log "cargo test --workspace"
cargo test --workspace "$@"
