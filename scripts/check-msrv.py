#!/usr/bin/env python3
"""Checks that `rust-version` in the workspace Cargo.toml is true of the dependencies: no package in the locked
dependency graph of the workspace (dev-dependencies included) declares a newer rust-version. The workspace's own
code is checked against it by clippy's `incompatible_msrv` lint (part of `make lint`).

Usage: scripts/check-msrv.py (from the repository root). Exit 1 and the offenders, else 0 and the newest one."""
import json
import re
import subprocess
import sys


def version(v):
    return tuple(int(x) for x in v.split("."))[:3] + (0,) * (3 - len(v.split(".")))


def main():
    toml = open("Cargo.toml").read()
    m = re.search(r'^\[workspace\.package\][^\[]*?^rust-version\s*=\s*"([0-9.]+)"', toml, re.M | re.S)
    if not m:
        sys.exit("check-msrv: no rust-version in [workspace.package] of Cargo.toml")
    ours = m.group(1)
    meta = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--locked"], check=True, capture_output=True, text=True
        ).stdout
    )
    in_graph = {n["id"] for n in meta["resolve"]["nodes"]}
    members = set(meta["workspace_members"])
    deps = [p for p in meta["packages"] if p["id"] in in_graph and p["id"] not in members and p.get("rust_version")]
    newer = [p for p in deps if version(p["rust_version"]) > version(ours)]
    if newer:
        print(f"rust-version is {ours}, but these dependencies need a newer toolchain:")
        for p in sorted(newer, key=lambda p: version(p["rust_version"])):
            print(f"  {p['name']} {p['version']}: rust-version {p['rust_version']}")
        sys.exit(1)
    top = max(deps, key=lambda p: version(p["rust_version"]), default=None)
    if top:
        print(f"rust-version {ours}: every dependency fits (newest: {top['name']} {top['version']} needs {top['rust_version']})")


if __name__ == "__main__":
    main()
