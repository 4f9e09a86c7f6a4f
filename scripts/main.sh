#!/usr/bin/env bash
# The main job: sets itself up, builds kvmem (release), shows what this machine offers, then runs
# `kvmem bench` over every transfer path this machine has. The table, bench.json, bench.svg and
# bench.png land in bench-out/ (or where --out-dir says). Extra arguments go to `kvmem bench`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh
# fio is the disk paths' yardstick; install it where we can, run without it otherwise.
if ! command -v fio >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    { $sudo_cmd apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq fio; } \
        >/dev/null 2>&1 || echo "main.sh: could not install fio; disk points will have no fio comparison" >&2
fi
# shellcheck source=env.sh
source scripts/env.sh
cargo build --release --locked -p kvmem-cli
./target/release/kvmem info
./target/release/kvmem bench "$@"
