#!/usr/bin/env bash
# Installs everything pubsearch's build and tests need on a fresh Debian machine. Idempotent: each
# tool is checked first and installed only when missing or at the wrong version. Versions come
# from Cargo.lock and package.json, so the toolchain always matches what the code was locked with.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

# The version Cargo.lock pins for a crate.
lock_version() {
    awk -v name="$1" '$0 == "name = \"" name "\"" { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock
}

apt_packages=()
command -v clang >/dev/null || apt_packages+=(clang)          # sqlite-wasm-rs compiles SQLite to wasm with it
command -v node >/dev/null || apt_packages+=(nodejs npm)      # wrangler / workerd
command -v python3 >/dev/null || apt_packages+=(python3)
[[ -x /usr/bin/chromium ]] || apt_packages+=(chromium)       # drives the search page in tests
if ((${#apt_packages[@]})); then
    log "installing Debian packages: ${apt_packages[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_packages[@]}" >/dev/null
fi

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    log "adding the wasm32-unknown-unknown target"
    rustup target add wasm32-unknown-unknown
fi
rustup component list --installed | grep -q '^clippy' || rustup component add clippy
rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt

wasm_bindgen_version=$(lock_version wasm-bindgen)
if [[ "$(wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen $wasm_bindgen_version" ]]; then
    log "installing wasm-bindgen-cli $wasm_bindgen_version (matches Cargo.lock)"
    # Not --locked: the CLI's own lock file names a webpki-roots release the registry no longer serves.
    cargo install --quiet --force wasm-bindgen-cli --version "$wasm_bindgen_version"
fi

worker_version=$(lock_version worker)
if [[ "$(worker-build --version 2>/dev/null)" != "$worker_version" ]]; then
    log "installing worker-build $worker_version (matches the worker crate in Cargo.lock)"
    cargo install --quiet --force --locked worker-build --version "$worker_version"
fi

# A real S3 API on loopback for the publish tests.
moto_version=5.2.1
if ! python3 -m pip show moto 2>/dev/null | grep -qx "Version: $moto_version"; then
    log "installing moto[server] $moto_version (local S3 for tests)"
    python3 -m pip install --quiet --root-user-action=ignore "moto[server]==$moto_version"
fi

if [[ ! -x node_modules/.bin/wrangler ]] || [[ ! -d node_modules/playwright-core ]] \
    || ! node_modules/.bin/wrangler --version 2>/dev/null | grep -q "$(node -p 'require("./package.json").devDependencies.wrangler')"; then
    log "installing wrangler (workerd, miniflare) and playwright-core from package-lock.json"
    npm ci --no-audit --no-fund --loglevel=error
fi
log "toolchain ready"
