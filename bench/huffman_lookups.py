"""How many AC table look-ups a JPEG block would cost with wider tables (not a test):

    python bench/huffman_lookups.py FILE.beton|IMAGE_FOLDER [IMAGES]

fastforward's Huffman decoder (``fastforward/_ext/jpeg_huffman.h``) reads up
to two AC coefficients (or one and the end of the block) with one look-up of
11 bits. This counts, on real data, how many look-ups other widths (W bits)
and other most-symbols-per-look-up (K) would take, before anyone builds them:
it reads the Huffman codes of IMAGES baseline JPEGs (default 12, chosen with
a fixed seed) in plain Python, keeps each block's AC symbols (the code's
length, the value's bits, whether it is a coefficient, a run of 16 zeros or
the end of the block), and packs them greedily as the decoder does: a
look-up takes a coefficient whose code and value bits fit in W, then up to
K - 1 more that fit in what is left, or the end of the block after them;
anything else (a longer code, a run of zeros, the end of a block alone) is
one look-up by itself.

FILE.beton: its first image field's stored JPEGs (what the crop decoders
read); IMAGE_FOLDER: the JPEGs below it (a writer's sources). About 0.1 s a
256 px image and 0.7 s a 500×375 one: it is a model, not a decoder.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fastforward.benchmark import stored_jpegs
from fastforward.reader import Reader

Symbol = tuple[int, int, str]  # (code length, value bits, 'c' coefficient / 'z' ZRL / 'e' EOB)
SCHEMES = [(11, 1), (11, 2), (11, 3), (12, 2), (12, 3), (13, 3), (14, 4)]
TODAY = (11, 2)
NOT_BASELINE = {0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _segments(data: bytes) -> tuple[dict, list, dict, bytes] | None:
    """Huffman tables, components (id, h, v), the scan's table choice, its data."""
    tables: dict[tuple[int, int], dict[tuple[int, int], int]] = {}
    components: list[tuple[int, int, int]] = []
    at = 2
    while True:
        if data[at] != 0xFF:
            raise ValueError("not a marker where one was expected")
        marker, length = data[at + 1], int.from_bytes(data[at + 2 : at + 4], "big")
        body = data[at + 4 : at + 2 + length]
        if marker == 0xC4:
            j = 0
            while j < len(body):
                kind, slot, counts = body[j] >> 4, body[j] & 15, body[j + 1 : j + 17]
                values = body[j + 17 : j + 17 + sum(counts)]
                j += 17 + sum(counts)
                codes, code, k = {}, 0, 0
                for bits in range(1, 17):
                    for _ in range(counts[bits - 1]):
                        codes[(bits, code)] = values[k]
                        code, k = code + 1, k + 1
                    code <<= 1
                tables[(kind, slot)] = codes
        elif marker in (0xC0, 0xC1):
            components = [(body[6 + 3 * c], body[7 + 3 * c] >> 4, body[7 + 3 * c] & 15)
                          for c in range(body[5])]
        elif marker in NOT_BASELINE:
            return None  # progressive, lossless, arithmetic: not what the decoder reads
        elif marker == 0xDA:
            choice = {body[1 + 2 * c]: (body[2 + 2 * c] >> 4, body[2 + 2 * c] & 15)
                      for c in range(body[0])}
            return tables, components, choice, data[at + 2 + length :]
        at += 2 + length


def _intervals(scan: bytes) -> Iterator[str]:
    """Each restart interval's entropy-coded bits, stuffing removed, as a '0'/'1' string."""
    current = bytearray()
    at = 0
    while at < len(scan):
        byte = scan[at]
        if byte == 0xFF:
            follower = scan[at + 1]
            if follower == 0:
                current.append(0xFF)
                at += 2
                continue
            if 0xD0 <= follower <= 0xD7:
                yield "".join(f"{b:08b}" for b in current)
                current = bytearray()
                at += 2
                continue
            break
        current.append(byte)
        at += 1
    yield "".join(f"{b:08b}" for b in current)


def blocks(data: bytes) -> Iterator[list[Symbol]]:
    """Each block's AC symbols, in the order the scan holds them."""
    parsed = _segments(data)
    if parsed is None:
        return
    tables, components, choice, scan = parsed
    layout = [choice[cid] for cid, h, v in components for _ in range(h * v)]
    for bits in _intervals(scan):
        reader = _Bits(bits)
        try:
            while reader.at < len(bits) - 8:  # the rest is padding
                for dc_slot, ac_slot in layout:
                    _, size = reader.symbol(tables[(0, dc_slot)])
                    reader.at += size
                    found: list[Symbol] = []
                    k = 1
                    while k < 64:
                        length, rs = reader.symbol(tables[(1, ac_slot)])
                        run, size = rs >> 4, rs & 15
                        if size:
                            reader.at += size
                            k += run + 1
                            found.append((length, size, "c"))
                        elif run == 15:
                            k += 16
                            found.append((length, 0, "z"))
                        else:
                            found.append((length, 0, "e"))
                            break
                    yield found
        except (IndexError, ValueError):
            continue  # the interval's padding read as codes: its blocks are all counted


class _Bits:
    """A restart interval's bits and where reading has got to."""

    def __init__(self, bits: str) -> None:
        self.bits, self.at = bits, 0

    def symbol(self, table: dict[tuple[int, int], int]) -> tuple[int, int]:
        """The next code's length and symbol."""
        code = 0
        for length in range(1, 17):
            code = code * 2 + (self.bits[self.at + length - 1] == "1")
            if (length, code) in table:
                self.at += length
                return length, table[(length, code)]
        raise ValueError("no such code")


def lookups(symbols: list[Symbol], width: int, most: int) -> int:
    """Look-ups one block takes with *width*-bit tables and up to *most* symbols each."""
    count = i = 0
    while i < len(symbols):
        length, size, kind = symbols[i]
        count += 1
        i += 1
        if kind != "c" or length + size > width:
            continue
        used, taken = length + size, 1
        while taken < most and i < len(symbols):
            length, size, kind = symbols[i]
            if kind == "c" and used + length + size <= width:
                used, taken, i = used + length + size, taken + 1, i + 1
            elif kind == "e" and used + length <= width:
                i += 1
                break
            else:
                break
    return count


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    source, images = Path(argv[0]), int(argv[1]) if len(argv) > 1 else 12
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
        blobs = [p.read_bytes() for p in files]
    else:
        with Reader(source) as reader:
            field = next(name for name, handler in reader.handlers.items()
                         if type(handler).__name__ == "RGBImageField")
            blobs = stored_jpegs(reader, field)
    chosen = np.random.default_rng(0).choice(len(blobs), min(images, len(blobs)), replace=False)
    totals = dict.fromkeys(SCHEMES, 0)
    block_count = symbol_count = 0
    for i in chosen:
        for symbols in blocks(blobs[i]):
            block_count += 1
            symbol_count += len(symbols)
            for scheme in SCHEMES:
                totals[scheme] += lookups(symbols, *scheme)
    print(f"{source}: {len(chosen)} JPEGs, {block_count / len(chosen):.0f} blocks each, "
          f"{symbol_count / block_count:.2f} AC symbols a block")
    for width, most in SCHEMES:
        share = totals[(width, most)] / totals[TODAY]
        note = "  (the decoder today)" if (width, most) == TODAY else ""
        print(f"  {width}-bit look-ups, up to {most} a look-up: "
              f"{totals[(width, most)] / block_count:.2f} a block, {share:.3f} of today's{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
