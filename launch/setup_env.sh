#!/usr/bin/env bash
# Creates .venv (Python 3.11, CPU torch 2.13.0, megatron-core 0.16.1, test extras) and the Debian
# packages the synthetic corpus needs. Idempotent; sourced by quickstart.sh and tests/run.sh.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SALM_VENV:-$root/.venv}"
if ! command -v espeak-ng >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq espeak-ng sox >/dev/null) || echo "setup_env: apt-get failed; the synthetic corpus falls back to espeakng-loader"
fi
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
stamp="$venv/.installed-$(sha1sum "$root/setup.py" | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  "$venv/bin/pip" install -q --upgrade pip
  # Pin torch first: a range would pull a several-GB CUDA build where a CPU one is at hand.
  if ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
    "$venv/bin/pip" install -q torch==2.13.0
  fi
  "$venv/bin/pip" install -q -e "$root[test]" "torch==$("$venv/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])')"
  touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
