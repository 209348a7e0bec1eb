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
# The Redis TLS tests make their certificates with the openssl command.
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# Python with venv (Debian splits ensurepip into python3-venv) for the test
# that drives Schematic's Python SDK (tests/tests/integration/python_sdk.rs).
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3 python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

# The Python SDK test's venv (the test creates it too when it is missing).
PYVENV=target/pyvenv
sdk_ok() {
  "$PYVENV/bin/python" -c "import importlib.metadata as m, wasmtime, redis, schematic
assert m.version('schematichq') == '1.4.6'" >/dev/null 2>&1
}
if ! sdk_ok; then
  log "creating $PYVENV (tests/python/requirements.txt)"
  [ -x "$PYVENV/bin/python" ] || python3 -m venv "$PYVENV"
  "$PYVENV/bin/python" -m pip install --quiet -r tests/python/requirements.txt
fi

# SecantusDB, a MongoDB-compatible server with change streams, for the
# MongoDB source tests (tests/src/services.rs starts it as its own process;
# it is GPL-2.0 and never linked into a binary). Pinned: it is a beta.
MONGOVENV="${CARGO_TARGET_DIR:-target}/mongo-venv"
SECANTUS_VERSION=0.7.0b3
mongo_ok() {
  [ -x "$MONGOVENV/bin/secantusd-py" ] && "$MONGOVENV/bin/python" -c "import importlib.metadata as m
assert m.version('SecantusDB') == '$SECANTUS_VERSION'" >/dev/null 2>&1
}
if ! mongo_ok; then
  log "creating $MONGOVENV (SecantusDB $SECANTUS_VERSION)"
  [ -x "$MONGOVENV/bin/python" ] || python3 -m venv "$MONGOVENV"
  "$MONGOVENV/bin/pip" install --quiet --pre "SecantusDB==$SECANTUS_VERSION"
fi

log "building guest plugins (wasm32-wasip2)"
bash tests/build-plugins.sh

log "cargo test --workspace"
cargo test --workspace "$@"
