#!/usr/bin/env bash
# Idempotent setup on a fresh Debian machine: a project-local venv holding the NIXL runtime
# (PyPI nixl-cu13==1.5.1 on a CUDA 13 driver, nixl-cu12==1.5.1 elsewhere, installed --no-deps;
# KVMEM_NIXL_WHEEL=nixl-cu12==1.5.1 or nixl-cu13==1.5.1 chooses) and libclang for bindgen.
# Re-running is cheap.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
# shellcheck source=nixl-runtime.sh
source "$root/scripts/nixl-runtime.sh"
flavor=$(kvmem_nixl_flavor)
NIXL_WHEEL=$(kvmem_nixl_requirement "$flavor")
LIBCLANG_WHEEL="libclang==18.1.1"

if [ ! -x "$venv/bin/python" ]; then
    echo "setup: creating $venv"
    python3 -m venv "$venv"
fi
have() { "$venv/bin/python" -m pip show -q "$1" >/dev/null 2>&1; }
if ! have "nixl-$flavor" || ! have libclang; then
    echo "setup: installing $NIXL_WHEEL and $LIBCLANG_WHEEL into $venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps "$NIXL_WHEEL" "$LIBCLANG_WHEEL"
fi
# The Python package's build and test tools (scripts/test.sh builds the wheel into this venv).
# ruff and mypy check the Python code's format, lint and types (pinned: a new release's rules
# must not fail CI by themselves).
PY_TOOLS=("maturin>=1.7,<2" "numpy" "pytest" "ruff==0.17.6" "mypy==2.4.1")
if ! have maturin || ! have numpy || ! have pytest || ! have ruff || ! have mypy; then
    echo "setup: installing ${PY_TOOLS[*]} into $venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "${PY_TOOLS[@]}"
fi
command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust (rustup.rs)" >&2; exit 1; }
command -v gcc >/dev/null || { echo "setup: gcc not found; apt-get install build-essential" >&2; exit 1; }
