"""The pictures of an evaluation run, as PNGs written with zlib.

Moodle shows admins `roc-curve.png`; drawing a few polylines and labels does
not justify matplotlib (tens of MB, a second of import time, font caches in
$HOME). Text is drawn with a built-in 5x7 bitmap font (`bitmapfont`).

- `roc-curve.png`: white square, grey grid at every 0.1, the dashed diagonal
  of a random guess, one coloured curve per evaluation iteration, the mean
  curve in black; axes labelled.
- `importance.png`: the indicators the models relied on most, as horizontal
  bars (permutation importance, see `mlbackend.importance`).
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import numpy as np

from mlbackend import bitmapfont

SIZE = 480
LEFT, BOTTOM, TOP, RIGHT = 56, 48, 24, 16
COLOURS = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]
BLACK, GREY = (0, 0, 0), (90, 90, 90)
#: Rows of the importance picture, and the characters of a name shown.
IMPORTANCE_ROWS = 20
NAME_CHARS = 40


def write_roc_png(path: str, curves: list[tuple[np.ndarray, np.ndarray]]) -> None:
    img = np.full((SIZE, SIZE, 3), 255, dtype=np.uint8)
    span = SIZE - LEFT - RIGHT
    assert span == SIZE - TOP - BOTTOM
    for t in np.linspace(0, 1, 11):
        _line(img, [(t, 0), (t, 1)], (230, 230, 230), span, 1)
        _line(img, [(0, t), (1, t)], (230, 230, 230), span, 1)
    _line(img, [(0, 0), (1, 0), (1, 1), (0, 1), (0, 0)], BLACK, span, 1)
    dashes = np.linspace(0, 1, 41)
    for a, b in zip(dashes[0::2], dashes[1::2]):
        _line(img, [(a, a), (b, b)], (150, 150, 150), span, 1)
    grid = np.linspace(0, 1, 201)
    mean_tpr = np.zeros_like(grid)
    for i, (fpr, tpr) in enumerate(curves):
        _line(img, list(zip(fpr, tpr)), COLOURS[i % len(COLOURS)], span, 1)
        mean_tpr += np.interp(grid, fpr, tpr)
    if curves:
        _line(img, list(zip(grid, mean_tpr / len(curves))), BLACK, span, 2)
    # Tick labels every 0.2, axis titles, title.
    step = bitmapfont.WIDTH + 1
    for t in np.linspace(0, 1, 6):
        label = f"{t:.1f}"
        x = LEFT + int(round(t * span))
        bitmapfont.draw(img, label, x - len(label) * step // 2, SIZE - BOTTOM + 6, GREY)
        y = SIZE - BOTTOM - int(round(t * span))
        bitmapfont.draw(img, label, LEFT - 6 - len(label) * step, y - 3, GREY)
    xlabel = "False positive rate"
    bitmapfont.draw(img, xlabel, LEFT + span // 2 - len(xlabel) * step, SIZE - 22, BLACK, 2)
    ylabel = "True positive rate"
    bitmapfont.draw(img, ylabel, 8, TOP + span // 2 - len(ylabel) * step, BLACK, 2, vertical=True)
    title = (
        f"ROC curve: {len(curves)} iteration{'s' if len(curves) != 1 else ''}"
        f"{', mean in black' if len(curves) > 1 else ''}"
    )
    bitmapfont.draw(img, title, LEFT, 8, BLACK, 2 if len(title) * 2 * step <= span else 1)
    write_png(path, img)


def write_importance_png(path: str, score_name: str, table: list[dict[str, Any]]) -> None:
    """The IMPORTANCE_ROWS most important indicators as bars, value and
    spread written beside each; a note when nothing was measured."""
    step = bitmapfont.WIDTH + 1
    rows = table[:IMPORTANCE_ROWS]
    row_h, top, name_w = 16, 52, NAME_CHARS * step + 10
    width = 800
    height = max(top + row_h * len(rows) + 20, 110)
    img = np.full((height, width, 3), 255, dtype=np.uint8)
    bitmapfont.draw(img, "Indicators that matter most", 10, 8, BLACK, 2)
    bitmapfont.draw(
        img,
        f"{score_name} lost when an indicator is shuffled among held-out "
        "rows (mean +- std over iterations)",
        10,
        30,
        GREY,
    )
    if not rows:
        bitmapfont.draw(img, "Nothing measured.", 10, top + 4, BLACK)
        write_png(path, img)
        return
    bar_x, bar_span = 10 + name_w, width - name_w - 10 - 140
    largest = max(max(r["importance"] for r in rows), 1e-12)
    for i, r in enumerate(rows):
        y = top + i * row_h
        name = r["name"] if len(r["name"]) <= NAME_CHARS else "..." + r["name"][-NAME_CHARS + 3 :]
        bitmapfont.draw(img, name, 10, y + 4, BLACK)
        length = int(round(max(r["importance"], 0.0) / largest * bar_span))
        img[y + 2 : y + row_h - 2, bar_x : bar_x + max(length, 1)] = COLOURS[0]
        bitmapfont.draw(
            img, f"{r['importance']:.4f} +- {r['deviation']:.4f}", bar_x + length + 6, y + 4, GREY
        )
    write_png(path, img)


def _line(
    img: np.ndarray,
    points: list[tuple[float, float]],
    colour: tuple[int, int, int],
    span: int,
    width: int,
) -> None:
    """A polyline, sampled twice per pixel along each segment: every
    segment's samples computed at once (a curve has a point per held-out
    row; one NumPy call per segment cost site-b's evaluation 2.5 s)."""
    if len(points) < 2:
        return
    p = np.asarray(points, dtype=np.float64)
    x0, y0, x1, y1 = p[:-1, 0], p[:-1, 1], p[1:, 0], p[1:, 1]
    steps = (np.maximum(np.abs(x1 - x0), np.abs(y1 - y0)) * span * 2).astype(np.int64) + 2
    seg = np.repeat(np.arange(len(steps)), steps)
    frac = (np.arange(seg.size) - np.repeat(np.cumsum(steps) - steps, steps)) / (steps[seg] - 1)
    xs = LEFT + (x0[seg] + (x1[seg] - x0[seg]) * frac) * span
    ys = SIZE - BOTTOM - (y0[seg] + (y1[seg] - y0[seg]) * frac) * span
    for dx in range(width):
        for dy in range(width):
            cols = np.clip(np.round(xs).astype(int) + dx, 0, SIZE - 1)
            rows = np.clip(np.round(ys).astype(int) + dy, 0, SIZE - 1)
            img[rows, cols] = colour


def write_png(path: str, img: np.ndarray) -> None:
    """An RGB uint8 image [rows, columns, 3] as an 8-bit PNG."""
    height, width, _ = img.shape
    raw = b"".join(b"\x00" + img[r].tobytes() for r in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )
    with open(path, "wb") as f:
        f.write(png)
