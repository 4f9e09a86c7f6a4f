#!/usr/bin/env bash
# Runs every test that needs no GPU, after doing its own setup (NIXL runtime venv, etcd for the
# NIXL metadata tests), then builds the Python package and runs its pytest suite. GPU tests are
# #[ignore]d (pytest: skipped with a reason) here and run on a GPU machine through
# scripts/gpu-build.sh + .gpu/run.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh
./scripts/setup-etcd.sh
# shellcheck source=env.sh
source scripts/env.sh
# The library's modules import each other without a cycle (docs/ARCHITECTURE.md).
./scripts/module-deps.sh --quiet
cargo test --workspace --locked "$@"
# The Python package: built into the venv (editable; the dev profile reuses the test build of
# the library) and tested with pytest; its GPU
# tests are skipped here with a reason and run on the GPU machine (scripts/gpu-build.sh).
(cd crates/kvmem-py && VIRTUAL_ENV="$KVMEM_VENV" "$KVMEM_VENV/bin/maturin" develop --locked --quiet)
"$KVMEM_VENV/bin/python" -m pytest -q -rs -p no:cacheprovider crates/kvmem-py/tests
# The Python code: formatted, linted (ruff.toml) and type-checked against the package's stubs.
py_code=(crates/kvmem-py/python crates/kvmem-py/tests crates/kvmem-py/bench crates/kvmem-cli/tests/foreign_agent.py scripts/compare-bench.py)
"$KVMEM_VENV/bin/ruff" format --check --quiet "${py_code[@]}"
"$KVMEM_VENV/bin/ruff" check --quiet "${py_code[@]}"
"$KVMEM_VENV/bin/mypy" --ignore-missing-imports --no-error-summary "${py_code[@]}"
