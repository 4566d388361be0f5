#!/usr/bin/env bash
# Prepare everything Vigil needs on a Debian 12 machine, idempotently:
#   bash scripts/bootstrap.sh            -> .venv with Vigil and its Python dependencies (for `vigil demo`)
#   bash scripts/bootstrap.sh --test     -> also the system servers the tests start themselves
#                                           (mosquitto, postgresql, victoria-metrics, influxdb 1.6) and
#                                           chromium + fonts-noto-cjk for the console's browser tests,
#                                           nginx-light for the reverse-proxy test
# Nothing is downloaded at run time; this script is the only installer.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
WANT_TEST=0
[ "${1:-}" = "--test" ] && WANT_TEST=1

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else echo "bootstrap: need root (or sudo) to run: $*" >&2; exit 1; fi
}
APT_UPDATED=0
apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "bootstrap: installing system packages: ${missing[*]}" >&2
  if [ $APT_UPDATED = 0 ]; then as_root apt-get update -qq; APT_UPDATED=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

PY=${VIGIL_PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.11 python3.12 python3.13 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then PY=$cand; break; fi
  done
fi
if [ -z "$PY" ]; then apt_install python3 python3-venv; PY=python3; fi
if ! "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1; then apt_install python3-venv; fi

if [ $WANT_TEST = 1 ]; then
  # Servers the tests start on free ports in temporary directories (never a running system service).
  apt_install mosquitto postgresql victoria-metrics influxdb
  # the console's browser tests: Debian's Chromium (Playwright drives it; its own download is never used)
  apt_install chromium fonts-noto-cjk
  # the TLS reverse-proxy test runs the shipped deploy/nginx/vigil-cloud.conf with its own nginx process on a
  # free port; the packaged system service is not wanted, so it is stopped if the install started it
  if ! dpkg -s nginx-light >/dev/null 2>&1; then
    apt_install nginx-light
    as_root sh -c 'service nginx stop || systemctl stop nginx' >/dev/null 2>&1 || true
  fi
fi

STAMP=.venv/.vigil-installed
HASH=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
if [ "$(cat $STAMP 2>/dev/null)" != "$HASH" ]; then
  echo "bootstrap: installing Python packages into .venv" >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
  # the distribution is vigil-safety (the command stays `vigil`); drop a checkout's old "vigil" install
  if .venv/bin/python -m pip show -q vigil >/dev/null 2>&1; then
    .venv/bin/python -m pip uninstall -q -y vigil >/dev/null
  fi
  .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[cloud,dev]"
  echo "$HASH" > $STAMP
fi
