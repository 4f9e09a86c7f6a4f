#!/usr/bin/env bash
# Runs every test that needs no GPU, after doing its own setup (NIXL runtime venv, etcd for the
# NIXL metadata tests). GPU tests are #[ignore]d here and run on a GPU machine through
# scripts/gpu-build.sh + .gpu/run.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh
./scripts/setup-etcd.sh
# shellcheck source=env.sh
source scripts/env.sh
cargo test --workspace --locked "$@"
