#!/usr/bin/env bash
# Runs every check and test of roomcast, installing what they need first.
# Works on a fresh Debian/Ubuntu machine (as root or with sudo); CI runs it
# through .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

have() { command -v "$1" >/dev/null 2>&1; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=""
apt_install() {
  have apt-get || { echo "test.sh: please install: $*" >&2; exit 1; }
  if [ -z "$apt_updated" ]; then as_root apt-get update -qq; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Rust (edition 2024 needs 1.85+; Debian's own cargo is older, so rustup).
if [ -f "$HOME/.cargo/env" ]; then . "$HOME/.cargo/env"; fi
if ! have cargo; then
  have curl || apt_install curl ca-certificates
  have cc || apt_install build-essential
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  . "$HOME/.cargo/env"
fi
if have rustup; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi
have cc || apt_install build-essential
have openssl || apt_install openssl
# The Redis-backed tests start their own redis-server on a free port.
have redis-server || apt_install redis-server
# The observability tests run promtool and a real Prometheus.
have prometheus && have promtool || apt_install prometheus
# The load-balancer tests run a real nginx.
have nginx || apt_install nginx-light
# The browser tests: Node.js, Debian's Chromium, playwright-core from npm.
have node && have npm || apt_install nodejs npm
have chromium || apt_install chromium
[ -d tests/browser/node_modules/playwright-core ] || (cd tests/browser && npm ci --no-audit --no-fund)
# The deployment checks are Python (pytest, PyYAML, kubernetes-validate) in a venv.
have python3 || apt_install python3
python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
venv=target/venv-deploy
if [ ! -x "$venv/bin/kubernetes-validate" ] || [ ! -x "$venv/bin/hadolint" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r deploy/tests/requirements.txt
fi
# dclint (compose lint) from npm, pinned by deploy/tests/package-lock.json.
[ -x deploy/tests/node_modules/.bin/dclint ] || (cd deploy/tests && npm ci --no-audit --no-fund)
# kubectl renders the k8s/ kustomizations; Debian does not package it, so a
# machine without it skips those checks, and says so below.
have kubectl || echo "test.sh: kubectl not found: the k8s/ manifests will NOT be rendered or validated (pytest reports them skipped)"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
echo "== browser tests (Playwright, Chromium)"
cargo build --workspace --bins --locked
(cd tests/browser && node --test --test-concurrency=1 chat.test.mjs client.test.mjs session.test.mjs)
echo "== deployment checks (pytest)"
(cd deploy/tests && "../../$venv/bin/python" -m pytest -q -rs)
