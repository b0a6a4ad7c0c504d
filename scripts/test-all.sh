#!/usr/bin/env bash
# Runs every pubsearch test on a fresh Debian machine, installing what it needs first:
# formatting and lints, native tests, the shared search core's tests compiled to wasm and run
# under node (compared answer by answer with the native run), and the edge Worker built with
# worker-build and exercised in workerd, the real Workers runtime.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-toolchain.sh

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

# Everything below runs offline: no telemetry, no downloads by wrangler or worker-build.
export WRANGLER_SEND_METRICS=false WRANGLER_HIDE_BANNER=true CLOUDFLARE_CF_FETCH_ENABLED=false \
    WRANGLER_SEND_ERROR_REPORTS=false
WASM_BINDGEN_BIN=$(command -v wasm-bindgen)
export WASM_BINDGEN_BIN
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

step "format"
cargo fmt --all --check

step "clippy (native)"
cargo clippy --workspace --exclude pubsearch-edge --all-targets -- -D warnings

step "clippy (wasm32)"
cargo clippy -p pubsearch-shared -p pubsearch-edge --target wasm32-unknown-unknown --all-targets -- -D warnings

step "embedding table (distilled once from the installed model; builds in the tests embed with it)"
cargo run --quiet -p pubsearch-native-worker -- embed-table

step "native tests"
cargo test --workspace --exclude pubsearch-edge

step "shared tests as wasm under node (after the native run: parity compares with its answers)"
CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
    cargo test -p pubsearch-shared --target wasm32-unknown-unknown

step "edge: unit tests (native)"
cargo test -p pubsearch-edge --lib

step "edge: worker-build"
worker-build --release --no-opt edge

step "edge: tests in workerd (snapshots built by the native pipeline; the page in Chromium)"
cargo build -p pubsearch-native-worker
node --test --test-concurrency=1 edge/tests/
