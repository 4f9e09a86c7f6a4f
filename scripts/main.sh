#!/usr/bin/env bash
# The main job: builds kvmem (release) after doing its own setup, shows what this machine offers,
# then runs the host demo. Extra arguments go to `kvmem demo`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh
# shellcheck source=env.sh
source scripts/env.sh
cargo build --release --locked -p kvmem-cli
./target/release/kvmem info
./target/release/kvmem demo "$@"
