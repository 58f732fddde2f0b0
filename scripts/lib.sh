# Shared helpers for scripts/run-local and scripts/test: install what is missing.
# Sourced, not run.

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# redis-server, redis-cli, curl and openssl (the TLS tests make their own
# certificates) from Debian's packages, when missing.
ensure_redis() {
  if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 \
    && command -v curl >/dev/null 2>&1 && command -v openssl >/dev/null 2>&1; then
    return
  fi
  echo "==> Installing redis-server, redis-tools, curl and openssl (apt)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools curl openssl >/dev/null
}

# A Rust toolchain (rustup's cargo); Debian's own cargo is too old for axum 0.8.
ensure_cargo() {
  if command -v cargo >/dev/null 2>&1; then
    return
  fi
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
    return
  fi
  echo "error: cargo not found. Install Rust with rustup (https://rustup.rs), then re-run." >&2
  exit 1
}

# python3 with venv support, for scripts/check-manifests (tools come from PyPI).
ensure_python_venv() {
  if command -v python3 >/dev/null 2>&1 && python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    return
  fi
  echo "==> Installing python3 and python3-venv (apt)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
}

# Headless Chromium (Debian's package), node, an emoji font, and playwright-core
# (npm, pinned by tests/browser/package-lock.json) for the browser tests. Playwright never
# downloads a browser here: the test points it at /usr/bin/chromium.
ensure_browser() {
  local pkgs=()
  command -v chromium >/dev/null 2>&1 || pkgs+=(chromium)
  command -v node >/dev/null 2>&1 || pkgs+=(nodejs)
  command -v npm >/dev/null 2>&1 || pkgs+=(npm)
  # Emoji in the demo page's screenshots (reactions) instead of empty boxes.
  fc-list 2>/dev/null | grep -qi "color emoji" || pkgs+=(fonts-noto-color-emoji)
  if [ ${#pkgs[@]} -gt 0 ]; then
    echo "==> Installing ${pkgs[*]} (apt)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
  fi
  if [ ! -d tests/browser/node_modules/playwright-core ]; then
    echo "==> Installing playwright-core for the browser test (npm)"
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix tests/browser --no-audit --no-fund --silent
  fi
}

# podman (with runc: the default crun fails on this host's cgroups), buildah
# and debootstrap for scripts/test-image: the image is built and run without a
# container registry or a Docker engine.
ensure_podman() {
  local pkgs=()
  command -v podman >/dev/null 2>&1 || pkgs+=(podman)
  command -v buildah >/dev/null 2>&1 || pkgs+=(buildah)
  command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || pkgs+=(debootstrap)
  command -v runc >/dev/null 2>&1 || [ -x /usr/sbin/runc ] || pkgs+=(runc)
  if [ ${#pkgs[@]} -gt 0 ]; then
    echo "==> Installing ${pkgs[*]} (apt)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
  fi
}

# Prometheus and promtool (Debian's package; its service is not started: no
# systemd) for the alert-rule tests and the dashboard-query check.
ensure_prometheus() {
  if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    return
  fi
  echo "==> Installing prometheus (apt)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
}
