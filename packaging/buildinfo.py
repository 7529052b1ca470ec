"""Write BUILD-INFO into a frozen bundle: the version, what it was built from,
and the oldest glibc (and libstdc++) a host needs to run it.

    python packaging/buildinfo.py BUNDLEDIR VERSION

The glibc floor is the highest GLIBC_x.y symbol version that any ELF file in
the bundle needs (`readelf -V`, its version-needs section): the dynamic loader
refuses to start the program, or to load that library, on an older glibc.
Prints the glibc line. install.sh reads `version` and `glibc` from the file.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
import sys

NEEDED = re.compile(r"Name: (GLIBC|GLIBCXX)_([0-9.]+)")


def needed_versions(path: str) -> list[tuple[str, tuple[int, ...]]]:
    """(family, version) of every symbol version the ELF file at `path` needs."""
    out = subprocess.run(["readelf", "-V", "-W", path], capture_output=True, text=True).stdout
    found, in_needs = [], False
    for line in out.splitlines():
        if line.startswith("Version needs section"):
            in_needs = True
        elif line.startswith("Version ") and "section" in line:
            in_needs = False  # symbol versions or version definitions
        elif in_needs:
            m = NEEDED.search(line)
            if m:
                found.append((m.group(1), tuple(int(p) for p in m.group(2).split("."))))
    return found


def is_elf(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def floors(bundle: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """Highest needed version per family, and the first file that needs it."""
    best: dict[str, tuple[tuple[int, ...], str]] = {}
    for dirpath, _, filenames in os.walk(bundle):
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if os.path.islink(path) or not is_elf(path):
                continue
            for family, version in needed_versions(path):
                if family not in best or version > best[family][0]:
                    best[family] = (version, os.path.relpath(path, bundle))
    return best


def git_commit() -> str:
    """The commit the bundle was built from ("-dirty" with uncommitted changes)."""

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["git", *args],
            capture_output=True,
            text=True,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        )

    try:
        head = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except OSError:  # no git: built from an exported tree
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty else "")


def distribution_version(*names: str) -> str:
    from importlib import metadata

    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return "unknown"


def main() -> int:
    bundle, version = sys.argv[1], sys.argv[2]
    found = floors(bundle)
    if "GLIBC" not in found:
        sys.exit(f"buildinfo: no ELF file in {bundle} needs glibc: is it a bundle?")

    def show(family: str) -> str:
        v, path = found[family]
        return f"{'.'.join(map(str, v))} (needed by {path})"

    lines = [
        f"version: {version}",
        f"commit: {git_commit()}",
        f"built: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%M:%SZ}",
        f"platform: linux-{platform.machine()}",
        f"python: {platform.python_version()}",
        f"tensorflow: {distribution_version('tensorflow-cpu', 'tensorflow')}",
        f"numpy: {distribution_version('numpy')}",
        f"glibc: {show('GLIBC')}",
    ]
    if "GLIBCXX" in found:
        bundled = any(
            n.startswith("libstdc++.so") for _, _, names in os.walk(bundle) for n in names
        )
        lines.append(
            f"libstdc++: GLIBCXX_{show('GLIBCXX')}" + ("" if bundled else ", from the host")
        )
    with open(os.path.join(bundle, "BUILD-INFO"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"glibc floor: {show('GLIBC')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
