#!/usr/bin/env bash
# Build the guest plugins (built-in, example and test plugins) for wasm32-wasip2
# with the workspace's `plugin` profile. Output: target/wasm32-wasip2/plugin/*.wasm
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
cargo build --target wasm32-wasip2 --profile plugin \
  -p emcachers-plugin-shape -p emcachers-plugin-schematic -p emcachers-plugin-template -p emcachers-test-plugin-hostile
