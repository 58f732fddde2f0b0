# Shared helpers for scripts/run-local, scripts/test, scripts/bench and
# scripts/test-image: install what is missing, pick free ports. Sourced, not run.

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# apt_install WHY PKG...: installs Debian packages, saying which and what for.
apt_install() {
  local why=$1
  shift
  echo "==> Installing $* (apt; $why)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# redis-server, redis-cli, curl and openssl (the TLS tests make their own
# certificates) from Debian's packages, when missing.
ensure_redis() {
  if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 \
    && command -v curl >/dev/null 2>&1 && command -v openssl >/dev/null 2>&1; then
    return
  fi
  apt_install "Redis and curl for the tests and local runs; openssl for the TLS tests' certificates" \
    redis-server redis-tools curl openssl
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
  apt_install "venvs for scripts/check-manifests and scripts/test-image" python3 python3-venv
}

# ensure_standardwebhooks: the Python `standardwebhooks` package (PyPI, pinned)
# in the project's venv (.run/venv, shared with scripts/check-manifests), for the
# webhook test that verifies the worker's requests with it
# (tests/tests/standard_webhooks.rs calls this). Prints nothing on stdout; the
# venv's python is .run/venv/bin/python. Needs PyPI once, then works offline.
STANDARDWEBHOOKS_REQUIREMENT="standardwebhooks==1.1.0"
ensure_standardwebhooks() {
  local venv="${CHECK_MANIFESTS_VENV:-.run/venv}"
  local stamp="$venv/.standardwebhooks"
  mkdir -p "$(dirname "$venv")"
  (
    # One installer at a time (tests may run in parallel).
    flock 9
    if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$STANDARDWEBHOOKS_REQUIREMENT" ]; then
      exit 0
    fi
    ensure_python_venv >&2
    echo "==> Installing $STANDARDWEBHOOKS_REQUIREMENT into $venv (PyPI)" >&2
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install -q --disable-pip-version-check "$STANDARDWEBHOOKS_REQUIREMENT" >&2
    echo "$STANDARDWEBHOOKS_REQUIREMENT" >"$stamp"
  ) 9>"$(dirname "$venv")/.venv.lock"
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
    apt_install "the browser tests" "${pkgs[@]}"
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
    apt_install "building and running the container image (scripts/test-image)" "${pkgs[@]}"
  fi
}

# Prometheus and promtool (Debian's package; its service is not started: no
# systemd) for the alert-rule tests and the dashboard-query check.
ensure_prometheus() {
  if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    return
  fi
  apt_install "the alert-rule tests and the dashboard-query check" prometheus
}

# free_ports N [--bus]: N distinct free TCP ports, space-separated, picked at
# random below the ephemeral range (32768-60999), which load generators' and
# clients' outgoing sockets use up. With --bus, each port's Redis Cluster bus
# port (port + 10000) is free too: ports from 20000-22000, bus ports 30000-32000.
free_ports() {
  python3 - "$@" <<'PY'
import random, socket, sys
n, bus = int(sys.argv[1]), "--bus" in sys.argv[2:]
lo, hi = (20000, 22000) if bus else (20000, 32000)
def free(p):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("0.0.0.0", p)); return True
    except OSError:
        return False
    finally:
        s.close()
taken, ports = set(), []
while len(ports) < n:
    p = random.randint(lo, hi)
    need = [p, p + 10000] if bus else [p]
    if taken.isdisjoint(need) and all(free(q) for q in need):
        taken.update(need); ports.append(p)
print(" ".join(map(str, ports)))
PY
}
