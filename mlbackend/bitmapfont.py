"""A 5x7 bitmap font for the labels of the evaluation's pictures.

The glyphs are the X11 "misc-fixed" 5x7 font (public domain, as its
COPYRIGHT property says), printable ASCII only: a PNG with axis labels and
indicator names does not justify a font library or a font file on disk.
Each glyph is 7 rows, top to bottom, of one byte each (two hex digits);
its 5 columns are the byte's top 5 bits.
"""

from __future__ import annotations

import numpy as np

WIDTH = 5  # advance per character, in pixels (the glyph's own width)
HEIGHT = 7
FIRST = 32  # ' '
_GLYPHS = (
    "0000000000000020202020002000505050000000000050F850F850000070A07028700080902040901000"
    "0040A040A0500020202000000000204040404020004020202020400000502070205000002020F8202000"
    "00000000302040000000F000000000000000606000001020408000002050505050200020602020207000"
    "6090102040F000F01060109060002060A0F0202000F080E0109060006080E090906000F0102020404000"
    "60906090906000609090701060000060600060600000606000604080001020402010000000F000F00000"
    "00402010204000205010200020006090B0B0806000609090F0909000E090E09090E00060908080906000"
    "E090909090E000F080E08080F000F080E080808000609080B09070009090F09090900070202020207000"
    "1010101090600090A0C0C0A090008080808080F00090F0F09090900090D0D0B0B0900060909090906000"
    "E09090E080800060909090D06010E09090E0A09000609040209060007020202020200090909090906000"
    "90909090606000909090F0F090009090606090900050505020202000F010204080F00070404040407000"
    "0080402010000070101010107000205000000000000000000000F0004020000000000000007090B05000"
    "8080E09090E0000000608080600010107090907000000060B0C06000205040E040400000007090608070"
    "8080E09090900020006020207000100010101050208080A0C0A09000602020202070000000A0F0909000"
    "0000E090909000000060909060000000E09090E080000070909070100000E090808000000070C030E000"
    "4040E040403000000090909070000000505050200000009090F0F0000000906060900000009090502040"
    "0000F02040F00010206020201000202020202020004020302020400050A00000000000"
)


def glyph(ch: str) -> np.ndarray:
    """7 x 5 booleans of one character; '?' for anything outside printable ASCII."""
    code = ord(ch) if FIRST <= ord(ch) < FIRST + len(_GLYPHS) // (2 * HEIGHT) else ord("?")
    start = (code - FIRST) * 2 * HEIGHT
    rows = [int(_GLYPHS[start + 2 * r : start + 2 * r + 2], 16) for r in range(HEIGHT)]
    return np.array([[(row >> (7 - c)) & 1 for c in range(WIDTH)] for row in rows], dtype=bool)


def render(text: str, scale: int = 1) -> np.ndarray:
    """The text as a HEIGHT*scale x (WIDTH+1)*len*scale mask (one blank column
    between characters)."""
    mask = np.zeros((HEIGHT, (WIDTH + 1) * len(text)), dtype=bool)
    for i, ch in enumerate(text):
        mask[:, i * (WIDTH + 1) : i * (WIDTH + 1) + WIDTH] = glyph(ch)
    return np.kron(mask, np.ones((scale, scale), dtype=bool)) if scale > 1 else mask


def draw(
    img: np.ndarray,
    text: str,
    x: int,
    y: int,
    colour: tuple[int, int, int],
    scale: int = 1,
    vertical: bool = False,
) -> None:
    """Draw `text` with its top-left corner at column x, row y of an RGB image
    (read bottom to top when `vertical`); what falls outside is cut off."""
    mask = render(text, scale)
    if vertical:
        mask = np.rot90(mask)
    h, w = mask.shape
    y0, x0 = max(y, 0), max(x, 0)
    y1, x1 = min(y + h, img.shape[0]), min(x + w, img.shape[1])
    if y1 <= y0 or x1 <= x0:
        return
    region = img[y0:y1, x0:x1]
    region[mask[y0 - y : y1 - y, x0 - x : x1 - x]] = colour
