"""fastforward._ext.planes: zstd decompression, and the mask and image range loops,
against Python's zstd and the NumPy references."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
from bands import bands
from reference import crop_nearest, crop_resize_exact

from fastforward._ext import planes
from fastforward._ext.resize import Workspace
from fastforward.fields.planes import pack, require_zstd


@pytest.fixture(scope="module")
def masks(photos: list[np.ndarray]) -> list[np.ndarray]:
    """Class-id masks of real photographs (their smoothed grey levels in 7 ids), of
    several sizes; and the same as uint16 instance ids (ids times 9000, plus a
    region number)."""
    out = []
    for k, (height, width) in enumerate([(61, 83), (120, 160), (47, 30), (200, 151)]):
        photo = photos[k % len(photos)]
        grey = photo[:height, :width].astype(np.float64).mean(axis=2)
        ids = np.digitize(grey, np.quantile(grey, [0.1, 0.3, 0.5, 0.7, 0.8, 0.95]))
        out.append(ids.astype(np.uint8))
    return out


def as_uint16(mask: np.ndarray) -> np.ndarray:
    rows = np.arange(mask.shape[0])[:, None] * 4 // mask.shape[0]
    return (mask.astype(np.uint16) * 9000 + rows).astype(np.uint16)


def batch_of(payloads: list[np.ndarray], gap: int = 3) -> tuple[np.ndarray, np.ndarray,
                                                                 np.ndarray]:
    """The payloads in one buffer, *gap* bytes apart (odd offsets: unaligned uint16),
    the last one ending the buffer; their starts and sizes."""
    starts, chunks, at = [], [], 0
    for payload in payloads:
        chunks += [np.full(gap, 0xEE, np.uint8), payload]
        starts.append(at + gap)
        at += gap + payload.size
    return (np.concatenate(chunks), np.array(starts, np.uint64),
            np.array([p.size for p in payloads], np.uint64))


def test_decompress_into_matches_pythons_zstd(masks: list[np.ndarray]) -> None:
    zstd = require_zstd()
    decoder = planes.ZstdDecoder()
    for mask in masks:
        frame = np.frombuffer(zstd.compress(mask.tobytes(), level=3), np.uint8)
        out = np.empty(mask.size, np.uint8)
        assert planes.decompress_into(decoder, frame, out) == mask.size
        np.testing.assert_array_equal(out, mask.reshape(-1))


def test_decompress_into_refuses_damage_and_wrong_sizes(masks: list[np.ndarray]) -> None:
    frame = bytearray(require_zstd().compress(masks[0].tobytes()))
    decoder = planes.ZstdDecoder()
    with pytest.raises(ValueError, match=f"holds {masks[0].size} bytes, not "
                                         f"{masks[0].size + 10}"):
        planes.decompress_into(decoder, np.frombuffer(bytes(frame), np.uint8),
                               np.empty(masks[0].size + 10, np.uint8))
    with pytest.raises(ValueError, match="corrupt zstd frame: Destination buffer is too small"):
        planes.decompress_into(decoder, np.frombuffer(bytes(frame), np.uint8),
                               np.empty(masks[0].size - 1, np.uint8))
    frame[6:14] = b"\xff" * 8
    with pytest.raises(ValueError, match="corrupt zstd frame"):
        planes.decompress_into(decoder, np.frombuffer(bytes(frame), np.uint8),
                               np.empty(masks[0].size, np.uint8))


def test_read_sizes(masks: list[np.ndarray]) -> None:
    source, starts, sizes = batch_of([pack(m, "zstd", 3) for m in masks])
    heights, widths = np.empty(len(masks), np.int64), np.empty(len(masks), np.int64)
    assert planes.read_sizes(source, starts, sizes, heights, widths) is None
    assert heights.tolist() == [m.shape[0] for m in masks]
    assert widths.tolist() == [m.shape[1] for m in masks]
    sizes[2] = 7
    assert planes.read_sizes(source, starts, sizes, heights, widths)[0] == 2
    # a start whose sum with the size wraps round past 2**64 (it passed the bounds
    # check, and the header was read before the buffer)
    sizes[2], starts[2] = 16 + starts[2], 2**64 - 16
    k, message = planes.read_sizes(source, starts, sizes, heights, widths)
    assert k == 2
    assert "outside the data" in message
    k, message = planes.decode_nearest_range(
        planes.ZstdDecoder(), source, starts[2:3], sizes[2:3], True, heights[:1], widths[:1],
        np.array([[0, 0, 1, 1]], np.int64), np.array([[1, 1]], np.int64),
        np.zeros(1, np.uint8), np.empty((1, 1, 1), np.uint8), 0, Workspace())
    assert k == 0
    assert "outside the data" in message


def windows(masks: list[np.ndarray], seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random crops, output sizes (enlarging, shrinking up to 3x, mixed) and flips."""
    rng = np.random.default_rng(seed)
    crops, outs = [], []
    for mask in masks:
        h = int(rng.integers(1, mask.shape[0] + 1))
        w = int(rng.integers(1, mask.shape[1] + 1))
        crops.append((int(rng.integers(mask.shape[0] - h + 1)),
                      int(rng.integers(mask.shape[1] - w + 1)), h, w))
        outs.append((int(rng.integers(1, 64)), int(rng.integers(1, 96))))
    flips = (rng.random(len(masks)) < 0.5).astype(np.uint8)
    return np.array(crops, np.int64), np.array(outs, np.int64), flips


@pytest.mark.parametrize("simd", [True, False], ids=["simd", "portable"])
@pytest.mark.parametrize("compression", ["zstd", None], ids=["zstd", "raw"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16], ids=["uint8", "uint16"])
@pytest.mark.parametrize("seed", range(4))
def test_nearest_range_matches_the_reference(masks: list[np.ndarray], dtype: type,
                                             compression: str | None, simd: bool,
                                             seed: int) -> None:
    values = [m if dtype == np.uint8 else as_uint16(m) for m in masks]
    source, starts, sizes = batch_of([pack(v, compression, 3) for v in values])
    crops, outs, flips = windows(values, seed)
    out = np.full((len(values), 64, 96), 77, dtype)
    planes.set_simd(simd)
    try:
        failed = planes.decode_nearest_range(
            planes.ZstdDecoder(), source, starts, sizes, compression == "zstd",
            np.array([v.shape[0] for v in values], np.int64),
            np.array([v.shape[1] for v in values], np.int64), crops, outs, flips, out, 5,
            Workspace())
    finally:
        planes.set_simd(True)
    assert failed is None
    for k, value in enumerate(values):
        oh, ow = outs[k]
        np.testing.assert_array_equal(out[k, :oh, :ow],
                                      crop_nearest(value, *crops[k], oh, ow, bool(flips[k])))
        assert (out[k, oh:] == 5).all()
        assert (out[k, :, ow:] == 5).all()


@pytest.mark.parametrize(("scale", "flip"), [(2.5, False), (1.0, True), (0.6, True),
                                             (0.45, False), (0.3, True)])
def test_nearest_tables_at_every_scale(masks: list[np.ndarray], scale: float,
                                       flip: bool) -> None:
    # enlarging (16-byte blocks), shrinking under 2x (8-byte blocks), and beyond (bytes)
    mask = masks[3]
    oh, ow = max(1, round(mask.shape[0] * scale)), max(1, round(mask.shape[1] * scale))
    source, starts, sizes = batch_of([pack(mask, None, 3)])
    out = np.empty((1, oh, ow), np.uint8)
    crops = np.array([[0, 0, *mask.shape]], np.int64)
    assert planes.decode_nearest_range(
        planes.ZstdDecoder(), source, starts, sizes, False, np.array([mask.shape[0]]),
        np.array([mask.shape[1]]), crops, np.array([[oh, ow]], np.int64),
        np.array([flip], np.uint8), out, 0, Workspace()) is None
    np.testing.assert_array_equal(out[0], crop_nearest(mask, 0, 0, *mask.shape, oh, ow, flip))


def test_nearest_range_reports_the_first_bad_payload(masks: list[np.ndarray]) -> None:
    payloads = [pack(m, "zstd", 3) for m in masks]
    broken = payloads[2].copy()
    broken[20:30] = 0xFF
    source, starts, sizes = batch_of([payloads[0], payloads[1], broken, payloads[3]])
    heights = np.array([m.shape[0] for m in masks], np.int64)
    widths = np.array([m.shape[1] for m in masks], np.int64)
    crops = np.stack([np.zeros(4), np.zeros(4), heights, widths], axis=1).astype(np.int64)
    out = np.zeros((4, 200, 160), np.uint8)
    args = (source, starts, sizes, True, heights, widths, crops, crops[:, 2:].copy(),
            np.zeros(4, np.uint8), out, 0, Workspace())
    k, message = planes.decode_nearest_range(planes.ZstdDecoder(), *args)
    assert k == 2
    assert "zstd" in message
    # the masks before it are written
    np.testing.assert_array_equal(out[1, :120, :160], masks[1])
    heights[1] += 1  # a mask of another size than its image
    k, message = planes.decode_nearest_range(planes.ZstdDecoder(), *args)
    assert k == 1
    assert "stored 120×160, expected 121×160" in message


def test_a_raw_payload_of_another_size_is_refused(masks: list[np.ndarray]) -> None:
    payload = pack(masks[0], None, 3)[:-1]
    source, starts, sizes = batch_of([payload])
    h, w = masks[0].shape
    k, message = planes.decode_nearest_range(
        planes.ZstdDecoder(), source, starts, sizes, False, np.array([h]), np.array([w]),
        np.array([[0, 0, h, w]], np.int64), np.array([[h, w]], np.int64),
        np.zeros(1, np.uint8), np.empty((1, h, w), np.uint8), 0, Workspace())
    assert k == 0
    assert message == (f"a {h}×{w} image needs {h * w} bytes of values, the payload holds "
                       f"{h * w - 1}")
    # and one longer than its header says (its rows would be read sheared)
    source, starts, sizes = batch_of([np.append(pack(masks[0], None, 3), np.uint8(0))])
    k, message = planes.decode_nearest_range(
        planes.ZstdDecoder(), source, starts, sizes, False, np.array([h]), np.array([w]),
        np.array([[0, 0, h, w]], np.int64), np.array([[h, w]], np.int64),
        np.zeros(1, np.uint8), np.empty((1, h, w), np.uint8), 0, Workspace())
    assert k == 0
    assert message.endswith(f"the payload holds {h * w + 1}")


@pytest.mark.skipif(sys.platform != "linux", reason="mprotect through ctypes: Linux")
def test_nearest_reads_nothing_past_the_source(tmp_path: Path) -> None:
    # Raw masks whose payload ends a page, with an unreadable page after it: the
    # 16-byte loads must not pass the source's end (a read past it kills the child).
    import subprocess

    code = """
import ctypes, mmap
import numpy as np
from fastforward._ext import planes
from fastforward._ext.resize import Workspace
from fastforward.fields.planes import pack
page = mmap.PAGESIZE
memory = mmap.mmap(-1, 2 * page)
address = ctypes.addressof(ctypes.c_char.from_buffer(memory))
libc = ctypes.CDLL(None, use_errno=True)
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
assert libc.mprotect(ctypes.c_void_p(address + page), page, 0) == 0  # PROT_NONE
source = np.frombuffer(memory, np.uint8, page)
for dtype in (np.uint8, np.uint16):
    for width in (1, 3, 8, 17, 40):
        mask = (np.arange(9 * width).reshape(9, width) % 7).astype(dtype)
        payload = pack(mask, None, 3)
        source[page - payload.size:] = payload
        for flip in (0, 1):
            for oh, ow in ((20, 3 * width + 5), (9, width), (5, max(1, width // 2 + 1))):
                out = np.empty((1, oh, ow), dtype)
                failed = planes.decode_nearest_range(
                    planes.ZstdDecoder(), source, np.array([page - payload.size], np.uint64),
                    np.array([payload.size], np.uint64), False, np.array([9]),
                    np.array([width]), np.array([[0, 0, 9, width]], np.int64),
                    np.array([[oh, ow]], np.int64), np.array([flip], np.uint8), out, 0,
                    Workspace())
                assert failed is None, failed
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)  # the installed package, not the tree
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.parametrize("compression", ["zstd", None], ids=["zstd", "raw"])
@pytest.mark.parametrize(("channels", "dtype"), [(4, np.uint16), (1, np.uint8), (16, np.uint8),
                                                 (3, np.uint16)])
def test_resize_range_matches_the_reference(photos: list[np.ndarray], channels: int,
                                            dtype: type, compression: str | None) -> None:
    images = [bands(photos, channels, dtype, h, w, seed=k)
              for k, (h, w) in enumerate([(50, 70), (33, 41), (64, 64)])]
    source, starts, sizes = batch_of([pack(i, compression, 3) for i in images])
    crops = np.array([[3, 5, 40, 60], [0, 0, 33, 41], [0, 0, 64, 64]], np.int64)
    flips = np.array([1, 0, 0], np.uint8)
    out = np.full((3, 64, 64, channels), 7, dtype)
    item = np.dtype(dtype).itemsize
    assert planes.decode_resize_range(
        planes.ZstdDecoder(), source, starts, sizes, compression == "zstd", item,
        np.array([i.shape[0] for i in images], np.int64),
        np.array([i.shape[1] for i in images], np.int64), crops, flips, out, None, None,
        Workspace(), Workspace()) is None
    for k, image in enumerate(images):
        np.testing.assert_array_equal(out[k], crop_resize_exact(image, *crops[k], 64, 64,
                                                                bool(flips[k])))
    # the third is the whole image at its size: copied as it is
    np.testing.assert_array_equal(out[2], images[2])


def test_resize_range_with_normalisation(photos: list[np.ndarray]) -> None:
    image = bands(photos, 5, np.uint16, 40, 50, seed=9)
    source, starts, sizes = batch_of([pack(image, "zstd", 3)])
    scale, bias = np.linspace(1e-4, 2e-4, 5), np.linspace(-2, -1, 5)
    out = np.empty((1, 30, 30, 5), np.float32)
    assert planes.decode_resize_range(
        planes.ZstdDecoder(), source, starts, sizes, True, 2, np.array([40]), np.array([50]),
        np.array([[0, 0, 40, 50]], np.int64), np.zeros(1, np.uint8), out, scale, bias,
        Workspace(), Workspace()) is None
    pixels = crop_resize_exact(image, 0, 0, 40, 50, 30, 30).astype(np.float32)
    np.testing.assert_array_equal(
        out[0], pixels * scale.astype(np.float32) + bias.astype(np.float32))


def test_resize_range_reports_a_frame_of_the_wrong_size(photos: list[np.ndarray]) -> None:
    image = bands(photos, 4, np.uint8, 20, 30, seed=2)
    payload = pack(image, "zstd", 3)
    source, starts, sizes = batch_of([payload])
    k, message = planes.decode_resize_range(
        planes.ZstdDecoder(), source, starts, sizes, True, 1, np.array([20]), np.array([30]),
        np.array([[0, 0, 20, 30]], np.int64), np.zeros(1, np.uint8),
        np.empty((1, 10, 10, 5), np.uint8), None, None, Workspace(), Workspace())
    assert k == 0
    assert "holds 2400 bytes, a 20×30 image needs 3000" in message


def test_the_range_kernels_note_the_sample_they_decode(photos: list[np.ndarray],
                                                       masks: list[np.ndarray]) -> None:
    """As the JPEG range kernel: ``progress[1]`` holds the dataset index of the
    sample being decoded, -1 after the range, the failing sample's after a failure."""
    samples = np.array([12, 3], np.int64)
    progress = np.array([4, 99], np.int64)
    image = bands(photos, 4, np.uint8, 20, 30, seed=2)
    good = pack(image, "zstd", 3)
    for payloads, expected in ([good, good], [4, -1]), ([good, good[:-5]], [4, 3]):
        source, starts, sizes = batch_of(payloads)
        failed = planes.decode_resize_range(
            planes.ZstdDecoder(), source, starts, sizes, True, 1, np.array([20, 20]),
            np.array([30, 30]), np.array([[0, 0, 20, 30]] * 2, np.int64), np.zeros(2, np.uint8),
            np.empty((2, 10, 10, 4), np.uint8), None, None, Workspace(), Workspace(),
            progress=progress, samples=samples)
        assert (failed is None) == (expected[1] == -1)
        assert progress.tolist() == expected
    mask = masks[0]
    h, w = mask.shape
    good = pack(mask, "zstd", 3)
    for payloads, expected in ([good, good], [4, -1]), ([good[:-5], good], [4, 12]):
        source, starts, sizes = batch_of(payloads)
        failed = planes.decode_nearest_range(
            planes.ZstdDecoder(), source, starts, sizes, True, np.array([h, h]),
            np.array([w, w]), np.array([[0, 0, h, w]] * 2, np.int64),
            np.array([[h, w]] * 2, np.int64), np.zeros(2, np.uint8),
            np.empty((2, h, w), np.uint8), 0, Workspace(), progress=progress, samples=samples)
        assert (failed is None) == (expected[1] == -1)
        assert progress.tolist() == expected


def test_a_zstd_decoder_is_not_pickled() -> None:
    with pytest.raises(TypeError, match="cannot pickle"):
        pickle.dumps(planes.ZstdDecoder())


@pytest.mark.parametrize("tail", ["bomb", "second frame", "garbage"])
def test_unpack_never_decompresses_past_the_headers_size(tail: str) -> None:
    """A small zstd frame saying 64 MiB behind a 4×4 header was decompressed whole
    (Reader.read and verify(decode=True) took gigabytes for a 39 KB payload) before
    the size was compared."""
    from fastforward.errors import DecodeError
    from fastforward.fields.planes import PLANES_HEADER, unpack

    zstd = require_zstd()
    header = np.array([(4, 4)], PLANES_HEADER).tobytes()
    good = zstd.compress(bytes(range(16)))
    body = {"bomb": zstd.compress(bytes(64 << 20)), "second frame": good + good,
            "garbage": good + b"\x00"}[tail]
    with pytest.raises(DecodeError, match="payload holds more"):
        unpack(header + body, np.dtype("u1"), None, "zstd", "mask")
    np.testing.assert_array_equal(unpack(header + good, np.dtype("u1"), None, "zstd", "mask"),
                                  np.arange(16, dtype=np.uint8).reshape(4, 4))
