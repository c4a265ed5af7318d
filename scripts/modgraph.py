#!/usr/bin/env python3
"""The library's module graph, and the check that keeps it a strict downhill order.

Prints each top-level module of src/ (src/<m>.rs and src/<m>/), its layer and the
modules it imports, then exits 1 naming every import of a module that is not listed
before it in LAYERS (an upward or sideways edge), every cycle, and every module that
LAYERS does not place.

An import is ANY text `crate::<module>` (doc comments included) before the file's
`#[cfg(test)] mod tests`, plus the `<module>::` paths inside `use crate::{...}`: the
same rule as the project's before-stop hook, so a doc link that points upward counts.

    python3 scripts/modgraph.py                # the graph and the check (CI)
    python3 scripts/modgraph.py --dot          # Graphviz of the same graph
    python3 scripts/modgraph.py --before REV   # the graph at a git revision (e.g. the
                                               # commit before a change), same check
"""

import os
import re
import subprocess
import sys
import tempfile

# Lowest first. A module may import only modules listed before it (in an earlier
# layer, or earlier in its own layer). ARCHITECTURE.md's layer table is this list.
LAYERS = [
    ("L0", ["error", "priority", "sys", "resolver", "addr"]),
    ("L1", ["syscalls", "numa", "mem"]),
    ("L2", ["metrics", "lanes", "layout", "resp"]),
    ("L3", ["config", "tls", "cluster", "sentinel"]),
    ("L4", ["batch", "region"]),
    ("L5", ["shard"]),
    ("L6", ["engine"]),
]
# Feature-gated test support: may import anything below the engine; nothing imports it.
SUPPORT = {"fuzz"}
TOP = "engine"


def modules(src):
    """Top-level module name -> its .rs files (src/tests/ and lib.rs excluded)."""
    mods = {}
    for root, _, files in os.walk(src):
        for f in sorted(files):
            if not f.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(root, f), src)
            if rel.split(os.sep)[0] == "tests" or rel in ("lib.rs", "main.rs"):
                continue
            top = rel.split(os.sep)[0]
            top = top[:-3] if top.endswith(".rs") else top
            mods.setdefault(top, []).append(os.path.join(root, f))
    return mods


def imports(mods):
    """Module -> {imported module: [files that import it]}."""
    edges = {m: {} for m in mods}
    for m, files in mods.items():
        for p in files:
            with open(p, errors="replace") as fh:
                t = re.split(r"#\[cfg\(test\)\]\s*mod tests", fh.read())[0]
            names = set(re.findall(r"crate::(\w+)", t))
            for g in re.findall(r"use crate::\{([^;]*)\}", t):
                names |= set(re.findall(r"(?:^|[,{\s])(\w+)::", "," + g))
            for n in names:
                if n in mods and n != m:
                    edges[m].setdefault(n, []).append(p)
    return edges


def cycles(edges):
    """Strongly connected components of more than one module (Tarjan)."""
    idx, low, stack, on, out, count = {}, {}, [], set(), [], [0]

    def visit(v):
        idx[v] = low[v] = count[0]
        count[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in idx:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], idx[w])
        if low[v] == idx[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in idx:
            visit(v)
    return out


def rank_of():
    rank, layer = {}, {}
    for name, ms in LAYERS:
        for m in ms:
            rank[m] = len(rank)
            layer[m] = name
    return rank, layer


def check(src, mods, edges):
    """The problems, one line each."""
    rank, _ = rank_of()
    bad = []
    for m in sorted(mods):
        if m not in rank and m not in SUPPORT:
            bad.append(f"{m}: not placed in LAYERS (scripts/modgraph.py)")
    for m in sorted(edges):
        for n in sorted(edges[m]):
            files = ", ".join(sorted({os.path.relpath(f, src) for f in edges[m][n]}))
            if n in SUPPORT:
                bad.append(f"{m} imports test support {n} ({files})")
            elif m in SUPPORT:
                if n == TOP:
                    bad.append(f"{m} (test support) imports {n} ({files})")
            elif m in rank and n in rank and rank[n] >= rank[m]:
                bad.append(f"{m} imports {n}, not below it ({files})")
    for comp in cycles(edges):
        bad.append("cycle: " + " <-> ".join(comp))
    return bad


def report(src, dot):
    mods = modules(src)
    edges = imports(mods)
    rank, layer = rank_of()
    order = sorted(mods, key=lambda m: (rank.get(m, len(rank)), m))
    if dot:
        print("digraph slotline {\n  rankdir=BT;")
        for m in order:
            print(f'  "{m}" [label="{m}\\n{layer.get(m, "test")}"];')
        for m in order:
            for n in sorted(edges[m]):
                print(f'  "{m}" -> "{n}";')
        print("}")
    else:
        for m in order:
            deps = " ".join(sorted(edges[m], key=lambda n: (rank.get(n, len(rank)), n)))
            print(f"{layer.get(m, 'test'):<4} {m:<10} -> {deps or '-'}")
    bad = check(src, mods, edges)
    for b in bad:
        print("modgraph: " + b, file=sys.stderr)
    if not bad and not dot:
        print(f"modgraph: {len(mods)} modules, no cycle, every import points down")
    return 1 if bad else 0


def main(argv):
    dot = "--dot" in argv
    rev = None
    if "--before" in argv:
        i = argv.index("--before")
        if i + 1 >= len(argv):
            print("usage: modgraph.py [--dot] [--before REV]", file=sys.stderr)
            return 2
        rev = argv[i + 1]
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    if rev is None:
        return report(os.path.join(root, "src"), dot)
    with tempfile.TemporaryDirectory() as tmp:
        # The src/ tree of REV, unpacked (no worktree, no checkout of the current one).
        tar = subprocess.run(
            ["git", "-C", root, "archive", rev, "src"], capture_output=True, check=False
        )
        if tar.returncode != 0:
            sys.stderr.write(tar.stderr.decode(errors="replace"))
            return 2
        subprocess.run(["tar", "-x", "-C", tmp], input=tar.stdout, check=True)
        print(f"# src/ at {rev}")
        return report(os.path.join(tmp, "src"), dot)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
