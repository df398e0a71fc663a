#!/usr/bin/env python3
"""The import graph between a crate's top-level modules, and its cycles.

    python3 scripts/import-graph.py controller/src

Reads `crate::` paths in the sources (`crate::a::b`, `use crate::{a, b::c}`),
comments and unit-test modules left out, and prints one line per module with the modules it uses,
then the cycles. Exits 1 when there is a cycle.
"""
import os
import re
import sys


def top_level_groups(body):
    """The first path segment of each item of a `{...}` use group."""
    items, depth, cur = [], 0, ""
    for ch in body:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(cur)
            cur = ""
            continue
        if depth == 0:
            cur += ch
    items.append(cur)
    return {m.group(1) for i in items if (m := re.match(r"\s*(\w+)", i))}


def uses(src):
    src = re.sub(r"//[^\n]*", "", src)
    # A unit-test module (by convention last in its file) may use fixtures
    # from anywhere: its edges are not the module's.
    src = re.split(r"#\[cfg\(test\)\]\s*mod \w+", src)[0]
    found = set(re.findall(r"crate::(\w+)", src))
    for m in re.finditer(r"crate::\{", src):
        depth, i = 1, m.end()
        while i < len(src) and depth:
            depth += {"{": 1, "}": -1}.get(src[i], 0)
            i += 1
        found |= top_level_groups(src[m.end():i - 1])
    return found


def main(root):
    mods = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            if not f.endswith(".rs"):
                continue
            parts = os.path.relpath(os.path.join(dirpath, f), root)[:-3].split(os.sep)
            if parts[-1] == "mod":
                parts = parts[:-1]
            if parts in (["lib"], ["main"]):
                continue
            with open(os.path.join(dirpath, f)) as fh:
                mods.setdefault(parts[0], set()).update(uses(fh.read()))
    edges = {m: sorted((d & set(mods)) - {m}) for m, d in mods.items()}
    for m in sorted(edges):
        print(f"{m} -> {', '.join(edges[m]) or '(nothing)'}")
    cycles = set()

    def walk(start, node, path):
        for n in edges[node]:
            if n == start:
                i = path.index(min(path))
                cycles.add(tuple(path[i:] + path[:i]))
            elif n not in path:
                walk(start, n, path + [n])

    for m in edges:
        walk(m, m, [m])
    for c in sorted(cycles):
        print("cycle: " + " -> ".join(c + (c[0],)))
    print("cycles: none" if not cycles else f"cycles: {len(cycles)}")
    return 1 if cycles else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "src"))
