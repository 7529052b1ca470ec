"""The pinned requirements of one machine: the lines of requirements files whose
environment marker holds there, printed without the marker; other lines as they are.

    python packaging/pins.py MACHINE FILE...     (MACHINE: x86_64, aarch64)

`pip download --platform manylinux_2_28_aarch64` fetches another machine's
wheels, but evaluates markers such as `platform_machine == "aarch64"` for the
machine pip runs on (pip's documented limitation), so packaging/build-root.sh
hands it this output instead: `tensorflow_cpu` for x86-64, `tensorflow` for
aarch64 (tensorflow-cpu has no aarch64 wheel).
"""

from __future__ import annotations

import sys

from packaging.markers import Marker


def pins(lines: list[str], machine: str) -> list[str]:
    """`lines` for `machine`: marked lines kept (marker removed) where the marker holds."""
    out = []
    for line in lines:
        requirement, semicolon, marker = line.partition(";")
        if not semicolon or line.lstrip().startswith("#"):
            out.append(line)
        elif Marker(marker).evaluate({"platform_machine": machine}):
            out.append(requirement.rstrip())
    return out


def main() -> int:
    if len(sys.argv) < 3:
        sys.exit(__doc__.split("\n\n")[1])
    machine, files = sys.argv[1], sys.argv[2:]
    for name in files:
        with open(name, encoding="utf-8") as f:
            for line in pins(f.read().splitlines(), machine):
                print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
