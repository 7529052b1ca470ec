"""Write BUILD-INFO into a frozen bundle: the version, what it was built from,
and the oldest glibc and libstdc++ a host needs to run it.

    python packaging/buildinfo.py BUNDLEDIR VERSION [--max-glibc 2.28]

The glibc floor is the highest GLIBC_x.y symbol version that any ELF file in
the bundle needs (`readelf -V`, its version-needs section): the dynamic loader
refuses to start the program, or to load that library, on an older glibc.
GLIBCXX_x.y.z and CXXABI_1.3.x are the same for the host's libstdc++ (not
bundled: see mlbackend.spec). With --max-glibc, every file that needs a newer
glibc than that is listed and the script fails: the release promises that
floor. Prints the glibc line. install.sh reads `version` and `glibc` from the
file.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
import sys

NEEDED = re.compile(r"Name: (GLIBC|GLIBCXX|CXXABI)_([0-9.]+)")


def needed_versions(path: str) -> list[tuple[str, tuple[int, ...]]]:
    """(family, version) of every symbol version the ELF file at `path` needs."""
    out = subprocess.run(
        ["readelf", "-V", "-W", path], capture_output=True, text=True, check=True
    ).stdout
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


def elf_needs(bundle: str) -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    """Every ELF file in the bundle (relative path) and the versions it needs."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(bundle):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if os.path.islink(path) or not is_elf(path):
                continue
            out[os.path.relpath(path, bundle)] = needed_versions(path)
    return out


def floors(
    needs: dict[str, list[tuple[str, tuple[int, ...]]]],
) -> dict[str, tuple[tuple[int, ...], str]]:
    """Highest needed version per family, and the first file that needs it."""
    best: dict[str, tuple[tuple[int, ...], str]] = {}
    for path, versions in needs.items():
        for family, version in versions:
            if family not in best or version > best[family][0]:
                best[family] = (version, path)
    return best


def too_new(
    needs: dict[str, list[tuple[str, tuple[int, ...]]]], limit: tuple[int, ...]
) -> list[str]:
    """'FILE needs GLIBC_x.y' for every file that needs a glibc newer than `limit`."""
    out = []
    for path, versions in needs.items():
        worst = max((v for family, v in versions if family == "GLIBC"), default=())
        if worst > limit:
            out.append(f"{path} needs GLIBC_{'.'.join(map(str, worst))}")
    return out


def git_commit() -> str:
    """The commit the bundle was built from ("-dirty" with uncommitted changes)."""

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["git", *args],
            capture_output=True,
            text=True,
            cwd=os.path.dirname(os.path.abspath(__file__)),
            check=False,
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
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle")
    parser.add_argument("version")
    parser.add_argument("--max-glibc", help="fail if any file needs a newer glibc")
    parser.add_argument("--commit", help="the commit built (default: asked from git)")
    args = parser.parse_args()
    bundle, version = args.bundle, args.version
    needs = elf_needs(bundle)
    found = floors(needs)
    if "GLIBC" not in found:
        sys.exit(f"buildinfo: no ELF file in {bundle} needs glibc: is it a bundle?")
    if args.max_glibc:
        over = too_new(needs, tuple(int(p) for p in args.max_glibc.split(".")))
        if over:
            sys.exit(
                f"buildinfo: the release promises glibc {args.max_glibc}, but\n  "
                + "\n  ".join(over)
            )

    def show(family: str) -> str:
        v, path = found[family]
        return f"{'.'.join(map(str, v))} (needed by {path})"

    lines = [
        f"version: {version}",
        f"commit: {args.commit or git_commit()}",
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
    if "CXXABI" in found:
        lines.append(f"cxxabi: CXXABI_{show('CXXABI')}")
    with open(os.path.join(bundle, "BUILD-INFO"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"glibc floor: {show('GLIBC')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
