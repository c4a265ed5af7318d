#!/usr/bin/env python3
"""Prints slotline's public surface: the crate root's public modules and re-exports
(src/lib.rs) and `Engine`'s public methods (`impl Engine` blocks under src/engine*),
marking `#[doc(hidden)]` test hooks. With a git revision, reads that revision instead:

    scripts/public_api.py            # the working tree
    scripts/public_api.py a8f7d42    # before issue 17
"""
import re
import subprocess
import sys

rev = sys.argv[1] if len(sys.argv) > 1 else None


def files():
    if rev:
        out = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, "src"],
                             capture_output=True, text=True, check=True).stdout.split()
    else:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "src"],
                             capture_output=True, text=True, check=True).stdout.split()
    return sorted(set(f for f in out if f.endswith(".rs")))


def read(path):
    if rev:
        return subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True,
                              text=True, check=True).stdout
    return open(path).read()


lib = read("src/lib.rs")
print("== crate root (src/lib.rs)")
for m in re.finditer(r"^(pub (?:mod|use) [^;{]*(?:\{[^}]*\})?[^;{]*;?)", lib, re.M):
    print("  " + " ".join(m.group(1).split()))
print("== Engine's public methods")
n = 0
for f in files():
    if not (f == "src/engine.rs" or f.startswith("src/engine/")):
        continue
    text = read(f)
    for block in re.finditer(r"^impl Engine \{\n(.*?)^\}", text, re.M | re.S):
        body = block.group(1)
        for m in re.finditer(r"^    pub (unsafe )?fn ([a-z_0-9]+)(<[^(]*>)?\(", body, re.M):
            before = body[:m.start()].rstrip().rsplit("\n", 3)
            hidden = any("#[doc(hidden)]" in l for l in before[-2:])
            if not hidden:
                n += 1
            print(f"  {m.group(1) or ''}{m.group(2)}{'  (doc(hidden) test hook)' if hidden else ''}  [{f}]")
print(f"== {n} public methods (test hooks excluded)")
