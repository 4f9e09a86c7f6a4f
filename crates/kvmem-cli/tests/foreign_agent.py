"""A foreign NIXL agent for `kvmem bench`'s two-node mode, written against NIXL's own Python API
(the `nixl_cu12` wheel, module `nixl_cu12._api`, plus numpy) and docs/TWO_NODE.md only.

    python foreign_agent.py target --name NAME --port P [--blocks N --block-size S]
    python foreign_agent.py initiator --target NAME --peer IP:PORT

The target serves one host region of N blocks of S bytes, filled with 0xA5, until an initiator
says `kvmem-bench-done`. The initiator checks every byte it moves: it reads the target's region
(all 0xA5), writes random blocks to a random permutation of the target's slots, reads the region
back and compares each slot with the block written to it. Both print one JSON line on success
and exit non-zero with a message on failure. crates/kvmem-cli/tests/foreign_agent.rs runs each
role against `kvmem bench`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

try:
    from nixl_cu12._api import nixl_agent, nixl_agent_config
except ImportError:  # the CUDA 13 wheel ships the same API under its own name
    from nixl_cu13._api import nixl_agent, nixl_agent_config  # type: ignore[no-redef]

HELLO = b"kvmem-bench-hello"
BLOCKS_PREFIX = b"kvmem-bench-blocks "
DONE = b"kvmem-bench-done"
BYE = b"kvmem-bench-bye"
POISON = 0xA5
STEP = 30.0


def fail(message: str) -> None:
    print(f"foreign agent: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def wait_for(what: str, check, timeout: float = STEP) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            fail(f"{what} did not happen within {timeout} s")
        time.sleep(0.005)


def wait_transfer(agent: nixl_agent, handle, what: str) -> None:
    state = agent.transfer(handle)
    deadline = time.monotonic() + STEP
    while state == "PROC":
        if time.monotonic() > deadline:
            fail(f"{what} did not finish within {STEP} s")
        state = agent.check_xfer_state(handle)
    if state != "DONE":
        fail(f"{what} failed: {state}")
    agent.release_xfer_handle(handle)


def next_message(agent: nixl_agent, peer: str, timeout: float = STEP) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        messages = agent.get_new_notifs().get(peer, [])
        if messages:
            return messages[0]
        time.sleep(0.005)
    fail(f"no notification from '{peer}' within {timeout} s")
    raise AssertionError  # unreachable: fail exits


def fetch_until_loaded(agent: nixl_agent, name: str, ip: str, port: int) -> None:
    """One fetch fails when the target is not up yet: ask again until the metadata arrives."""
    deadline = time.monotonic() + STEP
    while not agent.check_remote_metadata(name):
        if time.monotonic() > deadline:
            fail(f"no metadata from '{name}' at {ip}:{port} within {STEP} s")
        agent.fetch_remote_metadata(name, ip, port)
        for _ in range(100):
            if agent.check_remote_metadata(name):
                break
            time.sleep(0.005)


def target(args: argparse.Namespace) -> None:
    agent = nixl_agent(
        args.name,
        nixl_agent_config(enable_listen_thread=True, listen_port=args.port, backends=["UCX"]),
    )
    region = np.full(args.blocks * args.block_size, POISON, dtype=np.uint8)
    addr = region.ctypes.data
    agent.register_memory([(addr, region.nbytes, 0, "")], "DRAM")
    answer = {
        "format": 1,
        "agent": args.name,
        "regions": [{"addr": addr, "len": region.nbytes, "mem_type": "Dram", "device_id": 0}],
        "block_size": args.block_size,
        "blocks": args.blocks,
    }
    print(f"foreign target '{args.name}' listening on port {args.port}", flush=True)
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        for peer, messages in agent.get_new_notifs().items():
            for message in messages:
                if message == HELLO:
                    # The initiator pushed its metadata before its hello; it may land after.
                    wait_for(f"metadata of '{peer}'", lambda p=peer: agent.check_remote_metadata(p))
                    agent.send_notif(peer, BLOCKS_PREFIX + json.dumps(answer).encode())
                elif message == DONE:
                    agent.send_notif(peer, BYE)
                    time.sleep(0.2)
                    touched = int(np.count_nonzero(region != POISON))
                    print(json.dumps({"role": "target", "initiator": peer, "touched": touched}))
                    return
        time.sleep(0.005)
    fail(f"no initiator said it was done within {args.wait} s")


def initiator(args: argparse.Namespace) -> None:
    ip, port = args.peer.rsplit(":", 1)
    agent = nixl_agent(
        f"foreign-initiator-{os.getpid()}",
        nixl_agent_config(enable_listen_thread=True, listen_port=args.own_port, backends=["UCX"]),
    )
    name = args.target
    fetch_until_loaded(agent, name, ip, int(port))
    agent.send_local_metadata(ip, int(port))
    agent.send_notif(name, HELLO)
    answer = next_message(agent, name)
    if not answer.startswith(BLOCKS_PREFIX):
        fail(f"the target's first notification is not its block list: {answer[:40]!r}")
    blocks = json.loads(answer[len(BLOCKS_PREFIX) :])
    (region,) = blocks["regions"]
    if region["mem_type"] != "Dram" or region["device_id"] != 0:
        fail(f"the target's region is not host memory: {region}")
    size, count = int(blocks["block_size"]), int(blocks["blocks"])
    total = size * count
    if total > int(region["len"]):
        fail(f"{count} blocks of {size} bytes exceed the {region['len']}-byte region")
    base = int(region["addr"])
    # The metadata fetched above may predate the target's registration (its listener runs from
    # the agent's start): fetch it again now that the block list says the region is registered.
    agent.remove_remote_agent(name)
    fetch_until_loaded(agent, name, ip, int(port))

    rng = np.random.default_rng(args.seed)
    src = rng.integers(0, 256, total, dtype=np.uint8)
    dst = np.full(total, 0, dtype=np.uint8)
    agent.register_memory([(src.ctypes.data, total, 0, ""), (dst.ctypes.data, total, 0, "")], "DRAM")

    def whole(op: str, local: np.ndarray, what: str) -> None:
        loc = agent.get_xfer_descs([(local.ctypes.data, total, 0)], "DRAM")
        rem = agent.get_xfer_descs([(base, total, 0)], "DRAM")
        wait_transfer(agent, agent.initialize_xfer(op, loc, rem, name), what)

    # 1. The target's own bytes: every byte is its poison.
    whole("READ", dst, "READ of the target's region")
    if not np.all(dst == POISON):
        bad = int(np.argmax(dst != POISON))
        fail(f"the target's byte {bad} is {dst[bad]:#x}, not {POISON:#x}")
    # 2. Local block k to remote slot perm[k], one descriptor per block.
    perm = rng.permutation(count)
    loc = agent.get_xfer_descs([(src.ctypes.data + k * size, size, 0) for k in range(count)], "DRAM")
    rem = agent.get_xfer_descs([(base + int(perm[k]) * size, size, 0) for k in range(count)], "DRAM")
    wait_transfer(agent, agent.initialize_xfer("WRITE", loc, rem, name), "WRITE of the blocks")
    # 3. Read it all back and compare slot by slot.
    dst[:] = 0
    whole("READ", dst, "READ back of the target's region")
    for k in range(count):
        slot = int(perm[k])
        got = dst[slot * size : (slot + 1) * size]
        want = src[k * size : (k + 1) * size]
        if not np.array_equal(got, want):
            bad = int(np.argmax(got != want))
            fail(f"slot {slot} (block {k}) byte {bad}: {got[bad]:#x}, want {want[bad]:#x}")
    agent.send_notif(name, DONE)
    bye = next_message(agent, name)
    if bye != BYE:
        fail(f"the target answered {bye[:40]!r} instead of its goodbye")
    print(json.dumps({"role": "initiator", "target": name, "blocks": count, "verified_bytes": 2 * total}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    roles = p.add_subparsers(dest="role", required=True)
    t = roles.add_parser("target")
    t.add_argument("--name", default="kvmem-bench-target")
    t.add_argument("--port", type=int, default=8888)
    t.add_argument("--blocks", type=int, default=16)
    t.add_argument("--block-size", type=int, default=64 << 10)
    t.add_argument("--wait", type=float, default=120.0)
    i = roles.add_parser("initiator")
    i.add_argument("--target", default="kvmem-bench-target")
    i.add_argument("--peer", required=True)
    i.add_argument("--own-port", type=int, required=True)
    i.add_argument("--seed", type=int, default=7)
    args = p.parse_args()
    if args.role == "target":
        target(args)
    else:
        initiator(args)


if __name__ == "__main__":
    main()
