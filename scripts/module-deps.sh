#!/usr/bin/env bash
# Lists the `use crate::...` / `super::...` edges between the modules of the kvmem library and
# fails when they form a cycle.
#
# Nodes: the top-level modules (`kind`, `nixl`, `transfer`, ...) and, inside a module that is a
# directory, its files (`nixl::agent`, `nixl::peer`, ...). A directory's `mod.rs` is the
# module's facade (it declares and re-exports its children), so a child naming `super::X` or
# `crate::nixl::X` is resolved through the facade's `pub use` to the file that defines `X`.
# Test modules (`#[cfg(test)]` to the end of the file) are left out.
#
#   scripts/module-deps.sh          # prints the edges, exits 1 on a cycle
#   scripts/module-deps.sh --quiet  # only the verdict
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)/crates/kvmem/src"
exec python3 - "$src" "${1:-}" <<'PY'
import os, re, sys
src, quiet = sys.argv[1], sys.argv[2] == "--quiet"

def strip(text):
    text = text.split("#[cfg(test)]")[0]
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)

files = {}  # module path tuple -> code
lib_rs = strip(open(os.path.join(src, "lib.rs")).read())
for root, _, names in os.walk(src):
    for n in names:
        if not n.endswith(".rs") or n == "lib.rs":
            continue
        rel = os.path.relpath(os.path.join(root, n), src)[:-3].split(os.sep)
        if rel[-1] == "mod":
            rel = rel[:-1]
        files[tuple(rel)] = strip(open(os.path.join(root, n)).read())

def node(path):
    """The node a module path belongs to: its top-level module, or a file of a directory."""
    return path[:2] if len(path) >= 2 and path[:2] in files else path[:1]

def paths_in(tree, prefix):
    """Expands a use tree `a::{b, c::d}` into paths."""
    tree = tree.strip()
    m = re.match(r"^([\w:]*?)(::)?\{(.*)\}$", tree, re.S)
    if not m:
        return [prefix + [p for p in tree.split("::") if p and p != "self"]]
    head = [p for p in m.group(1).split("::") if p]
    out, depth, cur = [], 0, ""
    for ch in m.group(3) + ",":
        if ch == "," and depth == 0:
            if cur.strip():
                out += paths_in(cur, prefix + head)
            cur = ""
            continue
        depth += (ch == "{") - (ch == "}")
        cur += ch
    return out

def reexports(facade):
    """Name -> child path, from a facade's `pub use child::...` lines (lib.rs for the root)."""
    table = {}
    for tree in re.findall(r"pub use ([^;]+);", lib_rs if facade == () else files.get(facade, "")):
        for p in paths_in(tree, []):
            if p and p[0] not in ("crate", "super", "self") and facade + (p[0],) in files:
                table[p[-1].split(" as ")[-1].strip()] = facade + (p[0],)
    return table

def target(me, path):
    if not path:
        return None
    if path[0] == "crate":
        path = path[1:]
    elif path[0] == "super":
        base = me[:-1]
        while path and path[0] == "super":
            path, base = path[1:], base if base == me[:-1] else base[:-1]
        path = list(base) + list(path)
    elif path[0] == "self":
        path = list(me) + list(path[1:])
    else:
        return None
    path = tuple(path)
    if path and path[0] in reexports(()):
        path = reexports(()).get(path[0]) + path[1:]  # `crate::Name` re-exported by lib.rs
    # Longest module prefix; a name re-exported by a facade resolves to its child.
    for k in range(len(path), 0, -1):
        if path[:k] in files:
            mod = path[:k]
            rest = path[k:]
            if rest and rest[0] in reexports(mod):
                return reexports(mod)[rest[0]]
            return mod
    return None

edges = set()
for me, code in files.items():
    facade = len(me) == 1 and any(len(k) == 2 and k[0] == me[0] for k in files)
    trees = [t for t in re.findall(r"\buse\s+([^;]+);", code)]
    trees = [t for t in trees if not (facade and re.search(r"pub use\s+" + re.escape(t), code))]
    paths = [p for t in trees for p in paths_in(t, [])]
    paths += [p.split("::") for p in re.findall(r"\b((?:crate|super)(?:::\w+)+)", code)]
    for p in paths:
        t = target(me, p)
        if t is None:
            continue
        a, b = node(me), node(t)
        if a != b and not (len(a) == 1 and b[:1] == a):  # a facade naming its own children
            edges.add((a, b))

name = lambda n: "::".join(n)
# Collapse to the level being checked: top-level modules among themselves, files among siblings.
graph = {}
for a, b in edges:
    if a[0] != b[0]:
        graph.setdefault(a[:1], set()).add(b[:1])
    elif len(a) == 2 and len(b) == 2:
        graph.setdefault(a, set()).add(b)
if not quiet:
    for a in sorted(graph):
        print(f"{name(a):28} -> {', '.join(sorted(name(b) for b in graph[a]))}")

state, cycle = {}, []
def visit(n, stack):
    state[n] = 1
    for m in sorted(graph.get(n, ())):
        if state.get(m) == 1:
            cycle.append(stack[stack.index(m):] + [m] if m in stack else [n, m])
        elif m not in state:
            visit(m, stack + [m])
    state[n] = 2
for n in sorted(graph):
    if n not in state:
        visit(n, [n])
if cycle:
    for c in cycle:
        print("cycle: " + " -> ".join(name(n) for n in c))
    sys.exit(1)
print(f"no import cycle among {len(files)} library files")
PY
