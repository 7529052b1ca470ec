"""The ROC curve picture of an evaluation run, as a PNG written with zlib.

Moodle shows admins `roc-curve.png`; drawing a few polylines does not justify
matplotlib (tens of MB, a second of import time, font caches in $HOME).
The picture: white square, grey grid at every 0.1, the dashed diagonal of a
random guess, one coloured curve per evaluation iteration, the mean curve in
black.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np

SIZE = 480
MARGIN = 30
COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def write_roc_png(path: str, curves: list[tuple[np.ndarray, np.ndarray]]) -> None:
    img = np.full((SIZE, SIZE, 3), 255, dtype=np.uint8)
    span = SIZE - 2 * MARGIN
    for t in np.linspace(0, 1, 11):
        _line(img, [(t, 0), (t, 1)], (230, 230, 230), span, 1)
        _line(img, [(0, t), (1, t)], (230, 230, 230), span, 1)
    _line(img, [(0, 0), (1, 0), (1, 1), (0, 1), (0, 0)], (0, 0, 0), span, 1)
    dashes = np.linspace(0, 1, 41)
    for a, b in zip(dashes[0::2], dashes[1::2]):
        _line(img, [(a, a), (b, b)], (150, 150, 150), span, 1)
    grid = np.linspace(0, 1, 201)
    mean_tpr = np.zeros_like(grid)
    for i, (fpr, tpr) in enumerate(curves):
        _line(img, list(zip(fpr, tpr)), COLOURS[i % len(COLOURS)], span, 1)
        mean_tpr += np.interp(grid, fpr, tpr)
    if curves:
        _line(img, list(zip(grid, mean_tpr / len(curves))), (0, 0, 0), span, 2)
    _write_png(path, img)


def _line(img: np.ndarray, points: list[tuple[float, float]], colour: tuple[int, int, int],
          span: int, width: int) -> None:
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        steps = int(max(abs(x1 - x0), abs(y1 - y0)) * span * 2) + 2
        xs = MARGIN + np.linspace(x0, x1, steps) * span
        ys = SIZE - MARGIN - np.linspace(y0, y1, steps) * span
        for dx in range(width):
            for dy in range(width):
                cols = np.clip(np.round(xs).astype(int) + dx, 0, SIZE - 1)
                rows = np.clip(np.round(ys).astype(int) + dy, 0, SIZE - 1)
                img[rows, cols] = colour


def _write_png(path: str, img: np.ndarray) -> None:
    height, width, _ = img.shape
    raw = b"".join(b"\x00" + img[r].tobytes() for r in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    png = (b"\x89PNG\r\n\x1a\n"
           + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9))
           + chunk(b"IEND", b""))
    with open(path, "wb") as f:
        f.write(png)
