"""An older release for the upgrade checks, made from a release archive
without building a second bundle: the same program, made to be version OLD.

  old-build.py dist/mlbackend-3.1.0-linux-x86_64.tar.gz OUTDIR [--version 3.0.99]

writes OUTDIR/mlbackend-OLD-linux-ARCH.tar.gz and its .sha256. The version
the program reports is a constant of the package `mlbackend` in the frozen
program's PYZ archive, inside the PKG archive that PyInstaller keeps in the
executable's ELF section `pydata`. That constant is replaced (the PYZ gets a
new copy of the module and a new table of contents; the PKG's entries after
it move), the section is replaced with objcopy, and BUILD-INFO and the
directory name say OLD too. Everything else is the release's own, so the
upgrade checks see two versions that differ in every path and in what they
answer to /version, and nothing else. Runs with the Python the bundle was
made with (its minor version: the code objects are marshalled).
"""

from __future__ import annotations

import argparse
import hashlib
import marshal
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import zlib

COOKIE = b"MEI\014\013\012\013\016"
COOKIE_FORMAT = "!8sIIII64s"
TOC_ENTRY_FORMAT = "!IIIIBc"


def patch_pyz(pyz: bytes, module: str, old: str, new: str) -> bytes:
    """The PYZ with `module`'s string constant `old` replaced by `new`: the
    new code is appended after the entries, then a new table of contents."""
    magic, pymagic, toc_offset = pyz[:4], pyz[4:8], struct.unpack("!i", pyz[8:12])[0]
    assert magic == b"PYZ\0", "not a PYZ archive"
    toc = dict(marshal.loads(pyz[toc_offset:]))
    typecode, offset, length = toc[module]
    code = marshal.loads(zlib.decompress(pyz[offset : offset + length]))
    if old not in code.co_consts:
        sys.exit(f"old-build.py: {module} has no constant {old!r}")
    code = code.replace(co_consts=tuple(new if c == old else c for c in code.co_consts))
    blob = zlib.compress(marshal.dumps(code), 6)
    body = bytearray(pyz[:toc_offset])
    toc[module] = (typecode, len(body), len(blob))
    body += blob
    new_toc_offset = len(body)
    body += marshal.dumps(list(toc.items()))
    body[:12] = magic + pymagic + struct.pack("!i", new_toc_offset)
    return bytes(body)


def patch_pkg(pkg: bytes, old: str, new: str) -> bytes:
    """The PKG (CArchive) with its PYZ entry patched; entries after it move."""
    cookie_at = pkg.rfind(COOKIE)
    size = struct.calcsize(COOKIE_FORMAT)
    magic, length, toc_offset, toc_length, pyvers, pylib = struct.unpack(
        COOKIE_FORMAT, pkg[cookie_at : cookie_at + size]
    )
    start = cookie_at + size - length
    assert start == 0 and cookie_at + size == len(pkg), "the section is more than the PKG"
    toc = bytearray(pkg[toc_offset : toc_offset + toc_length])
    entries = []
    pos = 0
    while pos < len(toc):
        entry_length, offset, data_length, _full, _compressed, typecode = struct.unpack_from(
            TOC_ENTRY_FORMAT, toc, pos
        )
        entries.append((pos, offset, data_length, typecode))
        pos += entry_length
    pyz = [e for e in entries if e[3] == b"z"]
    assert len(pyz) == 1, "one PYZ in the PKG"
    pyz_pos, pyz_offset, pyz_length, _ = pyz[0]
    new_pyz = patch_pyz(pkg[pyz_offset : pyz_offset + pyz_length], "mlbackend", old, new)
    delta = len(new_pyz) - pyz_length
    assert struct.unpack_from("!B", toc, pyz_pos + 16)[0] == 0, "the PYZ is stored uncompressed"
    for pos, offset, _length, _ in entries:
        if pos == pyz_pos:
            struct.pack_into("!III", toc, pos + 4, offset, len(new_pyz), len(new_pyz))
        elif offset > pyz_offset:
            struct.pack_into("!I", toc, pos + 4, offset + delta)
    data = pkg[:pyz_offset] + new_pyz + pkg[pyz_offset + pyz_length : toc_offset]
    cookie = struct.pack(
        COOKIE_FORMAT, magic, length + delta, toc_offset + delta, toc_length, pyvers, pylib
    )
    return data + bytes(toc) + cookie


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("archive")
    ap.add_argument("outdir")
    ap.add_argument("--version", default="3.0.99")
    a = ap.parse_args()
    name = os.path.basename(a.archive)[: -len(".tar.gz")]
    _, version, _, arch = name.split("-")
    old_name = f"mlbackend-{a.version}-linux-{arch}"
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(a.archive) as tar:
            tar.extractall(tmp, filter="tar")
        rel = os.path.join(tmp, old_name)
        os.rename(os.path.join(tmp, name), rel)
        with open(os.path.join(rel, "BUILD-INFO")) as f:
            python = next(ln.split()[1] for ln in f if ln.startswith("python: "))
        if python.split(".")[:2] != [str(n) for n in sys.version_info[:2]]:
            sys.exit(f"old-build.py: run me with Python {python} (the bundle's), not {sys.version}")
        exe = os.path.join(rel, "mlbackend")
        section = os.path.join(tmp, "pydata")
        objcopy = shutil.which("objcopy") or sys.exit("old-build.py: needs objcopy (binutils)")
        subprocess.run([objcopy, "--dump-section", f"pydata={section}", exe], check=True)
        with open(section, "rb") as f:
            pkg = f.read()
        with open(section, "wb") as f:
            f.write(patch_pkg(pkg, version, a.version))
        subprocess.run([objcopy, "--update-section", f"pydata={section}", exe], check=True)
        os.remove(section)
        info = os.path.join(rel, "BUILD-INFO")
        with open(info) as f:
            lines = f.read().splitlines(keepends=True)
        with open(info, "w") as f:
            f.writelines(
                f"version: {a.version}\n" if line.startswith("version: ") else line
                for line in lines
            )
        os.makedirs(a.outdir, exist_ok=True)
        out = os.path.join(a.outdir, old_name + ".tar.gz")
        with tarfile.open(out, "w:gz", compresslevel=1) as tar:
            tar.add(rel, arcname=old_name)
    with open(out, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    with open(out + ".sha256", "w") as f:
        f.write(f"{digest}  {os.path.basename(out)}\n")
    print(out)


if __name__ == "__main__":
    main()
