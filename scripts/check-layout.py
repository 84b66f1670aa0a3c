#!/usr/bin/env python3
"""Checks that the modules of a crate's src/ depend on each other one way: no import cycle among sibling modules,
at any depth (e.g. between proxy and upstream, or between proxy::http::engine and proxy::http::parse).

A module's dependencies are the `crate::` paths it names (in `use` items and in code), its `super::` paths, and
the paths that start with one of its own submodules. Unit tests (`#[cfg(test)] mod tests`) are left out. A
reference from a module to its own ancestor or descendant is not an edge between siblings and is ignored.

Usage: scripts/check-layout.py [SRC_DIR]   (default: src). Exit 1 with the cycles found, else 0.
"""
import os
import re
import sys


def module_path(root, path):
    rel = os.path.relpath(path, root)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return tuple(rel)


def strip_tests(text):
    """Leaves out unit tests and comments (doc links are no dependency)."""
    text = re.sub(r"#\[cfg\(test\)\]\s*mod tests\s*\{.*", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def expand_groups(text):
    """`a::{b, c::{d, e}}` -> the full paths a::b, a::c::d, a::c::e."""
    out = []
    for m in re.finditer(r"\b((?:crate|super|self|[a-z_][a-z0-9_]*)(?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{", text):
        start = m.end()
        depth, i = 1, start
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        inner = text[start : i - 1]
        parts, depth, cur = [], 0, ""
        for ch in inner:
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
                continue
            depth += {"{": 1, "}": -1}.get(ch, 0)
            cur += ch
        parts.append(cur)
        for p in parts:
            p = p.strip()
            if p and p != "self":
                for sub in expand_groups(p) or [p]:
                    out.append(m.group(1) + "::" + sub)
    return out


def references(text):
    paths = re.findall(r"\b(?:crate|super)(?:::[A-Za-z_][A-Za-z0-9_]*)+", text)
    paths += [p for p in expand_groups(text) if p.startswith(("crate::", "super::"))]
    return paths, text


def main():
    args = [a for a in sys.argv[1:] if a != "-v"]
    root = args[0] if args else "src"
    files = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            if n.endswith(".rs"):
                p = os.path.join(dirpath, n)
                files[module_path(root, p)] = p
    modules = set(files)
    children = {m: {c[-1] for c in modules if len(c) == len(m) + 1 and c[: len(m)] == m} for m in modules}

    def resolve(path):
        """The longest module prefix of `path` (a tuple of names)."""
        for k in range(len(path), -1, -1):
            if path[:k] in modules:
                return path[:k]
        return ()

    edges = {}
    for mod, path in files.items():
        text = strip_tests(open(path).read())
        paths, _ = references(text)
        # Paths through this module's own submodules: `use sniff::Sniffed;`, `splice::relay(...)`.
        for child in children.get(mod, ()):
            paths += ["self::" + p for p in re.findall(r"\b" + child + r"(?:::[A-Za-z_][A-Za-z0-9_]*)+", text)]
        for p in paths:
            segs = p.split("::")
            if segs[0] == "crate":
                target = tuple(segs[1:])
            elif segs[0] == "self":
                target = mod + tuple(segs[1:])
            else:
                base = list(mod)
                while segs and segs[0] == "super":
                    base = base[:-1]
                    segs = segs[1:]
                target = tuple(base) + tuple(segs)
            target = resolve(target)
            # Common parent, then the two siblings under it.
            k = 0
            while k < min(len(mod), len(target)) and mod[k] == target[k]:
                k += 1
            if k == len(mod) or k == len(target):
                continue  # ancestor or descendant
            parent = mod[:k]
            edges.setdefault(parent, {}).setdefault(mod[k], set()).add(target[k])

    cycles = []
    for parent, graph in sorted(edges.items()):
        index, low, stack, on, counter = {}, {}, [], set(), [0]

        def strong(v):
            index[v] = low[v] = counter[0]
            counter[0] += 1
            stack.append(v)
            on.add(v)
            for w in graph.get(v, ()):
                if w not in index:
                    strong(w)
                    low[v] = min(low[v], low[w])
                elif w in on:
                    low[v] = min(low[v], index[w])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    prefix = "::".join(("crate",) + parent)
                    cycles.append(" <-> ".join(f"{prefix}::{c}" for c in sorted(comp)))

        for v in list(graph):
            if v not in index:
                strong(v)

    if "-v" in sys.argv:
        for parent, graph in sorted(edges.items()):
            for a, bs in sorted(graph.items()):
                print("::".join(("crate",) + parent), a, "->", ", ".join(sorted(bs)))
    if cycles:
        print("import cycles among sibling modules:")
        for c in cycles:
            print("  " + c)
        sys.exit(1)
    print(f"{len(modules)} modules, no import cycle among siblings")


if __name__ == "__main__":
    main()
