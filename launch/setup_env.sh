#!/usr/bin/env bash
# Creates a virtual environment with torch, megatron-core and the test and plots extras, and the Debian packages
# the synthetic corpus needs. Idempotent; sourced by quickstart.sh and tests/run.sh.
#
#   SALM_PYTHON  interpreter to build the venv from (default python3); a name such as python3.12
#                that is not on PATH is looked up among pyenv's installed versions
#   SALM_VENV    the venv (default .venv in the repository)
#   SALM_TORCH, SALM_MCORE  override the pins below
#
# Pins by Python version: 3.11 -> torch 2.13.0 (CPU build) + megatron-core 0.16.1 (the last release
# for 3.11); 3.12+ -> torch 2.14.1 (PyPI's CUDA build, runs on CPU too) + megatron-core 0.19.2.
#   SALM_PYTHON=python3.12 SALM_VENV=.venv312 bash tests/run.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SALM_VENV:-$root/.venv}"
case "$venv" in /*) ;; *) venv="$root/$venv" ;; esac

salm_resolve_python() {  # prints a runnable interpreter for $1 (a command, path or pythonX.Y)
  local want="$1" found=""
  if "$want" -c 'import sys' >/dev/null 2>&1; then
    command -v "$want"
    return
  fi
  if command -v pyenv >/dev/null 2>&1; then
    found="$(ls -d "$(pyenv root)"/versions/"${want#python}"*/bin/python 2>/dev/null | sort -V | tail -n 1)"
  fi
  [ -n "$found" ] || { echo "setup_env: no interpreter for SALM_PYTHON=$want" >&2; return 1; }
  echo "$found"
}

if { ! command -v espeak-ng >/dev/null 2>&1 || [ ! -f /usr/share/wordnet/data.noun ]; } && \
   command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then  # wordnet-base: the corpus's English text
  (apt-get update -qq && apt-get install -y -qq espeak-ng wordnet-base sox >/dev/null) || echo "setup_env: apt-get failed; the synthetic corpus falls back to espeakng-loader and needs --text-source"
fi
if [ ! -x "$venv/bin/python" ]; then
  "$(salm_resolve_python "${SALM_PYTHON:-python3}")" -m venv "$venv"
fi
py_minor="$("$venv/bin/python" -c 'import sys; print(sys.version_info[1])')"
if [ "$py_minor" -ge 12 ]; then
  torch_pin="${SALM_TORCH:-2.14.1}" mcore_pin="${SALM_MCORE:-0.19.2}"
else
  torch_pin="${SALM_TORCH:-2.13.0}" mcore_pin="${SALM_MCORE:-0.16.1}"
fi
stamp="$venv/.installed-$( (cat "$root/setup.py"; echo "$torch_pin $mcore_pin") | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  "$venv/bin/pip" install -q --upgrade pip
  # Pin torch first: a range would pull whatever build pip finds newest.
  if ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
    "$venv/bin/pip" install -q "torch==$torch_pin"
  fi
  installed_torch="$("$venv/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])')"
  "$venv/bin/pip" install -q -e "$root[test,plots]" "torch==$installed_torch" "megatron-core==$mcore_pin"
  touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
