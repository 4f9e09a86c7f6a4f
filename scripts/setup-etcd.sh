#!/usr/bin/env bash
# Idempotent: makes an `etcd` server binary available for kvmem's NIXL metadata tests
# (crates/kvmem/tests/nixl_etcd.rs start a throw-away etcd on loopback). Debian's `etcd-server`
# package provides /usr/bin/etcd. Re-running is cheap when it is already installed.
set -euo pipefail
if command -v etcd >/dev/null 2>&1; then
    echo "setup-etcd: $(command -v etcd) present ($(etcd --version 2>/dev/null | head -n1))"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup-etcd: etcd not found and apt-get unavailable; install etcd (v3) by hand" >&2
    exit 1
fi
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends etcd-server
# The Debian package starts a system-wide etcd on the default ports (2379/2380) where an init
# system runs; the tests do not need it (they start their own on free ports), so stop it if it is
# there. Ignore failures: containers usually have no init system.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
    "${sudo_cmd[@]}" systemctl disable --now etcd >/dev/null 2>&1 || true
fi
command -v etcd >/dev/null 2>&1 || { echo "setup-etcd: etcd still not on PATH after install" >&2; exit 1; }
echo "setup-etcd: installed $(etcd --version 2>/dev/null | head -n1)"
