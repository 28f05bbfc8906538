#!/usr/bin/env bash
# The README's test command: install what the tests need, then lint, type-check and run every test.
# Runs as root on Debian (CI) or as a user with sudo; idempotent, safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests use: squid (the proxy path), faketime (a gateway clock far off), testssl.sh (TLS quality of the relay listeners), stunnel4 and
# OpenSSH (the benchmark's peers), a C compiler (the benchmark's load generator), procps; chromium
# (the status page's browser tests, driven by Playwright), prometheus (promtool and a real server
# scraping the daemons), systemd-container, debootstrap, dpkg-dev and fakeroot (the package and
# its systemd units; shellcheck for its scripts).
APT_PACKAGES=(python3-venv squid faketime testssl.sh stunnel4 openssh-server openssh-client gcc libc6-dev libssl-dev procps iproute2
  chromium chromium-driver prometheus systemd-container debootstrap dpkg-dev fakeroot shellcheck)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'

echo "== ruff"
.venv/bin/ruff check gateway tests bench
.venv/bin/ruff format --check gateway tests bench
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
.venv/bin/pytest "$@"
