"""Region decoding (fastforward._ext.jpeg) against whole-image decoding.

The rule these tests pin: a window decoded by the kernel is exactly the same
window cut out of a whole-image decode (simplejpeg, the same libjpeg-turbo
IDCT), for every chroma subsampling, progressive and grayscale JPEGs. The
crop decoders' output is then exactly ``crop_resize_into`` of the whole
image (today's path), and at a DCT scale M/8 < 1 within a stated tolerance.
"""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import simplejpeg
from reference import crop_resize

from fastforward._ext.resize import Workspace, crop_resize_into

jpeg = pytest.importorskip("fastforward._ext.jpeg", reason="built without libjpeg-turbo")


def encode(image: np.ndarray, subsampling: str = "420", quality: int = 90) -> bytes:
    return simplejpeg.encode_jpeg(np.ascontiguousarray(image), quality=quality,
                                  colorspace="RGB", colorsubsampling=subsampling)


def encode_pillow(image: np.ndarray, mode: str = "RGB", **options: object) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).convert(mode).save(
        buffer, format="JPEG", **{"quality": 90, **options})
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photo(photos: list[np.ndarray]) -> np.ndarray:
    """A real photograph at the size the benchmarks store (256 px high)."""
    return np.ascontiguousarray(photos[2][:256, :341])


@pytest.fixture(scope="module")
def decoder() -> object:
    return jpeg.JpegDecoder()


def random_windows(rng: np.random.Generator, height: int, width: int,
                   count: int) -> list[tuple[int, int, int, int]]:
    out = []
    for _ in range(count):
        h, w = int(rng.integers(1, height + 1)), int(rng.integers(1, width + 1))
        out.append((int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)),
                    h, w))
    return out


def encode_marked(image: np.ndarray, subsampling: str = "420") -> bytes:
    """As fastforward's writer encodes: a restart marker at each MCU row."""
    return jpeg.encode_rgb(np.ascontiguousarray(image), 90, subsampling, 1)


KINDS = {
    "420": lambda image: encode(image, "420"),
    "422": lambda image: encode(image, "422"),
    "444": lambda image: encode(image, "444"),
    "progressive": lambda image: encode_pillow(image, progressive=True),
    "pillow-444": lambda image: encode_pillow(image, subsampling=0),
    "grayscale": lambda image: encode_pillow(image, "L"),
    # restart markers: decoding starts at the one above the window and skips each
    # row's rest to the next one, where each row is one restart interval
    "420-markers": lambda image: encode_marked(image, "420"),
    "422-markers": lambda image: encode_marked(image, "422"),
    "444-markers": lambda image: encode_marked(image, "444"),
    "grayscale-markers": lambda image: encode_pillow(image, "L", restart_marker_rows=1),
    "420-markers-every-2-rows": lambda image: encode_pillow(image, restart_marker_rows=2),
    # an interval that is not a whole row: decoded from the top, as without markers
    "420-markers-every-5-mcus": lambda image: encode_pillow(image, restart_marker_blocks=5),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fast_idct", [True, False], ids=["fastdct", "accurate"])
def test_whole_image_is_simplejpegs(photo: np.ndarray, decoder: object, kind: str,
                                    fast_idct: bool) -> None:
    data = KINDS[kind](photo)
    height, width = photo.shape[:2]
    expected = simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=fast_idct)
    got = jpeg.decode_window(decoder, data, height, width, 8, 0, height, 0, width, fast_idct)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("kind", KINDS)
def test_a_window_is_exactly_that_window_of_the_whole_image(photo: np.ndarray, decoder: object,
                                                            kind: str) -> None:
    """Columns are widened by one on each side before decoding: without that, the
    window's first and last columns differ where the chroma is subsampled
    horizontally (fancy upsampling lacks the outer neighbour; up to ~25 levels)."""
    data = KINDS[kind](photo)
    height, width = photo.shape[:2]
    whole = simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=True)
    rng = np.random.default_rng(15)
    windows = random_windows(rng, height, width, 150)
    windows += [(0, 0, height, 1), (0, width - 1, height, 1), (height - 1, 0, 1, width),
                (16, 16, 16, 16), (17, 15, 1, 1), (height - 16, width - 16, 16, 16)]
    for y, x, h, w in windows:
        got = jpeg.decode_window(decoder, data, height, width, 8, y, h, x, w)
        np.testing.assert_array_equal(got, whole[y : y + h, x : x + w],
                                      err_msg=f"window {h}x{w} at ({y}, {x})")


@pytest.mark.parametrize("marked", [False, True], ids=["plain", "markers"])
@pytest.mark.parametrize("scale", [1, 2, 4])
def test_a_scaled_window_is_that_window_of_the_scaled_image(photo: np.ndarray,
                                                            decoder: object, scale: int,
                                                            marked: bool) -> None:
    data = encode_marked(photo) if marked else encode(photo)
    height, width = photo.shape[:2]
    sh, sw = -(-height * scale // 8), -(-width * scale // 8)
    # simplejpeg picks the smallest scale that keeps min_height x min_width: this one
    whole = simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=True, min_height=sh,
                                   min_width=sw)
    assert whole.shape[:2] == (sh, sw)
    for y, x, h, w in random_windows(np.random.default_rng(scale), sh, sw, 40):
        got = jpeg.decode_window(decoder, data, height, width, scale, y, h, x, w)
        np.testing.assert_array_equal(got, whole[y : y + h, x : x + w])


def test_restart_markers_are_where_the_writer_puts_them(photo: np.ndarray) -> None:
    """One restart interval per MCU row (16 px at 4:2:0), the pixels of the same
    encode without markers, and the bytes of Pillow's encode without them."""
    height, width = photo.shape[:2]
    plain, marked = jpeg.encode_rgb(photo, 90, "420", 0), encode_marked(photo)
    assert plain == encode_pillow(photo)  # libjpeg's defaults, quality 90, 4:2:0
    assert b"\xff\xdd" not in plain
    mcus_per_row = -(-width // 16)
    dri = marked.index(b"\xff\xdd")
    assert marked[dri + 4 : dri + 6] == mcus_per_row.to_bytes(2, "big")
    entropy = marked[marked.index(b"\xff\xda"):]
    numbers = [entropy[i + 1] - 0xD0 for i in range(len(entropy) - 1)
               if entropy[i] == 0xFF and 0xD0 <= entropy[i + 1] <= 0xD7]
    assert numbers == [k % 8 for k in range(-(-height // 16) - 1)]
    np.testing.assert_array_equal(simplejpeg.decode_jpeg(marked), simplejpeg.decode_jpeg(plain))
    assert len(marked) < len(plain) * 1.01


@pytest.mark.parametrize(("window", "row", "mcus"), [
    # rows cut at the first MCU boundary two columns past the window: 82 -> 6 MCUs
    ((200, 30, 40, 50), 12, 6),     # below the top and left of the right edge: both
    ((200, 261, 40, 80), 12, 0),    # reaching the right edge: the rows above only
    ((0, 30, 40, 50), 0, 6),        # at the top: each row's rest only
    ((16, 30, 40, 50), 0, 6),       # its first row's chroma neighbour is in row 0
    ((17, 30, 40, 50), 1, 6),
], ids=["below-left", "right-edge", "top", "second-row", "below-second-row"])
def test_decoding_starts_and_stops_at_the_markers(photo: np.ndarray, decoder: object,
                                                  window: tuple[int, int, int, int], row: int,
                                                  mcus: int) -> None:
    data = encode_marked(photo)
    height, width = photo.shape[:2]
    y, x, h, w = window
    whole = simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=True)
    got = jpeg.decode_window(decoder, data, height, width, 8, y, h, x, w)
    assert (decoder.restart_row, decoder.restart_mcus) == (row, mcus)
    np.testing.assert_array_equal(got, whole[y : y + h, x : x + w])
    # without markers, or told not to use them: decoded from the top, the same pixels
    got = jpeg.decode_window(decoder, data, height, width, 8, y, h, x, w, restarts=False)
    assert (decoder.restart_row, decoder.restart_mcus) == (0, 0)
    np.testing.assert_array_equal(got, whole[y : y + h, x : x + w])
    jpeg.decode_window(decoder, encode(photo), height, width, 8, y, h, x, w)
    assert (decoder.restart_row, decoder.restart_mcus) == (0, 0)


@pytest.mark.parametrize("kind", ["420-markers", "422-markers", "444-markers",
                                  "grayscale-markers"])
@pytest.mark.parametrize("scale", [8, 4, 2, 1])
def test_a_window_ending_at_any_column_is_exact_when_rows_are_cut_short(
        photo: np.ndarray, decoder: object, kind: str, scale: int) -> None:
    """The frame is cut at the first MCU boundary two columns past the window and
    kept 8 columns wide at least (libjpeg upsamples 2 chroma columns another
    way): every right edge, at every scale, narrow windows and wider ones."""
    data = KINDS[kind](photo[:192, :256])
    height, width = 192, 256
    sh, sw = -(-height * scale // 8), -(-width * scale // 8)
    whole = simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=True, min_height=sh,
                                   min_width=sw)
    rng = np.random.default_rng(scale)
    cut = 0
    for x_end in range(1, sw + 1):
        for w in (1, 2, 17):
            if w > x_end:
                continue
            y = int(rng.integers(0, sh))
            h = int(rng.integers(1, sh - y + 1))
            got = jpeg.decode_window(decoder, data, height, width, scale, y, h, x_end - w, w)
            cut += decoder.restart_mcus > 0
            np.testing.assert_array_equal(got, whole[y : y + h, x_end - w : x_end],
                                          err_msg=f"window {h}x{w} at ({y}, {x_end - w})")
    assert cut > sw  # most windows were cut short


def marker_positions(data: bytes) -> list[int]:
    start = data.index(b"\xff\xda")
    return [i for i in range(start, len(data) - 1)
            if data[i] == 0xFF and 0xD0 <= data[i + 1] <= 0xD7]


@pytest.mark.parametrize("damage", ["renumbered", "removed"])
def test_damaged_markers_above_the_window_are_errors(photo: np.ndarray, decoder: object,
                                                    damage: str) -> None:
    """A marker out of sequence (or missing) above the window: the kernel does
    not trust its count and decodes from the top, where libjpeg finds the fault."""
    data = bytearray(encode_marked(photo))
    height, width = photo.shape[:2]
    third = marker_positions(bytes(data))[3]
    if damage == "renumbered":
        data[third + 1] = 0xD0 + (data[third + 1] - 0xD0 + 2) % 8
    else:
        del data[third : third + 2]
    with pytest.raises(ValueError, match="Corrupt JPEG data: "):
        jpeg.decode_window(decoder, bytes(data), height, width, 8, 200, 40, 30, 50)
    assert decoder.restart_row == 0


def test_rows_the_window_skips_are_not_read(photo: np.ndarray, decoder: object) -> None:
    """Damage between two markers above the window, or right of it, cannot reach
    its pixels (each interval starts afresh): they are those of the intact file."""
    good = encode_marked(photo)
    height, width = photo.shape[:2]
    whole = simplejpeg.decode_jpeg(good, colorspace="RGB", fastdct=True)
    data = bytearray(good)
    markers = marker_positions(good)
    data[markers[3] + 2 : markers[3] + 40] = bytes(range(1, 39))  # in row 4
    data[markers[13] - 30 : markers[13] - 2] = bytes(range(1, 29))  # row 13's right end
    got = jpeg.decode_window(decoder, bytes(data), height, width, 8, 200, 40, 30, 50)
    assert (decoder.restart_row, decoder.restart_mcus) == (12, 6)
    np.testing.assert_array_equal(got, whole[200:240, 30:80])


def segment_offsets(data: bytes) -> dict[int, int]:
    """Each header marker's offset (the first of each kind), up to the scan header."""
    offsets: dict[int, int] = {}
    pos = 2
    while True:
        marker = data[pos + 1]
        offsets.setdefault(marker, pos)
        if marker == 0xDA:
            return offsets
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")


@pytest.mark.parametrize("header", ["two-restart-intervals", "an-interval-before-the-frame",
                                    "markers-without-length"])
def test_unusual_headers_with_markers_give_the_whole_images_pixels(
        photo: np.ndarray, decoder: object, header: str) -> None:
    """libjpeg takes the last restart interval; the kernel patches every one in its
    copy of the header, checks what libjpeg read from it, and decodes from the top
    otherwise (a second DRI once made narrowed rows take the wrong MCUs)."""
    good = encode_marked(photo)
    offsets = segment_offsets(good)
    dri, sof, sos = offsets[0xDD], offsets[0xC0], offsets[0xDA]
    if header == "two-restart-intervals":
        data = good[:sos] + good[dri : dri + 6] + good[sos:]
    elif header == "an-interval-before-the-frame":
        data = good[:sof] + b"\xff\xdd\x00\x04\x00\x05" + good[sof:]
    else:  # TEM and a fill byte between segments: no length to skip
        data = good[:sof] + b"\xff\x01\xff" + good[sof:]
    height, width = photo.shape[:2]
    whole = simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=True)
    np.testing.assert_array_equal(whole, simplejpeg.decode_jpeg(good, fastdct=True))
    for y, x, h, w in random_windows(np.random.default_rng(9), height, width, 60):
        got = jpeg.decode_window(decoder, data, height, width, 8, y, h, x, w)
        np.testing.assert_array_equal(got, whole[y : y + h, x : x + w],
                                      err_msg=f"window {h}x{w} at ({y}, {x})")


def test_a_narrowed_decode_leaves_no_leniency_behind(photo: np.ndarray,
                                                     decoder: object) -> None:
    """Bytes skipped to the next marker are accepted only while rows are cut short:
    the next JPEG's stray bytes are an error again, whatever came before."""
    good = encode_marked(photo)
    height, width = photo.shape[:2]
    sof = segment_offsets(good)[0xC0]
    stray = good[:sof] + b"\x01\x02\x03" + good[sof:]
    jpeg.decode_window(decoder, good, height, width, 8, 200, 40, 30, 50)
    assert decoder.restart_mcus > 0
    for restarts in (False, True):
        with pytest.raises(ValueError, match="extraneous bytes"):
            jpeg.decode_window(decoder, stray, height, width, 8, 200, 40, 30, 50,
                               restarts=restarts)


def test_encode_rgb_grows_its_buffer() -> None:
    """Noise at quality 100, 4:4:4 compresses to more than the first buffer."""
    noise = np.random.default_rng(3).integers(0, 256, (256, 256, 3), np.uint8)
    data = jpeg.encode_rgb(noise, 100, "444", 1)
    assert len(data) > 256 * 256 // 2 + 4096
    decoded = simplejpeg.decode_jpeg(data, colorspace="RGB")
    assert np.abs(decoded.astype(int) - noise).mean() < 3


def test_encode_rgb_out_of_memory_is_a_memory_error(tmp_path: Path) -> None:
    """The encoder's buffer cannot grow (an address-space limit): MemoryError, told by
    libjpeg's error code, not a ValueError about the image."""
    script = textwrap.dedent("""
        import resource
        import numpy as np
        from fastforward._ext import jpeg
        noise = np.random.default_rng(3).integers(0, 256, (4096, 4096, 3), np.uint8)
        jpeg.encode_rgb(noise[:64, :64].copy(), 100, "444")  # libjpeg's code loaded
        with open("/proc/self/status") as status:
            size = next(int(line.split()[1]) for line in status if line.startswith("VmSize"))
        # room for the first buffer (8 MiB) and one doubling, not for the 40 MiB needed
        limit = (size << 10) + (28 << 20)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        try:
            jpeg.encode_rgb(noise, 100, "444")
        except MemoryError as exc:
            print("MemoryError", exc)
        """)
    # run from elsewhere than the checkout: the installed package, not the source tree
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "MemoryError no memory to encode a 4096x4096 JPEG"


def test_a_truncated_marked_jpeg_is_an_error(photo: np.ndarray, decoder: object) -> None:
    data = encode_marked(photo)
    height, width = photo.shape[:2]
    with pytest.raises(ValueError, match="Premature end"):
        jpeg.decode_window(decoder, data[: marker_positions(data)[12] + 50], height, width, 8,
                           200, 56, 30, 50)


@pytest.mark.parametrize(("sampling", "factors"), [
    ("444", 0x11), ("422", 0x21), ("420", 0x22), ("440", 0x12), ("411", 0x41), ("441", 0x14),
    ("410", 0x42)])
def test_encode_rgb_samples_the_luma_as_asked(photo: np.ndarray, sampling: str,
                                              factors: int) -> None:
    """Each sampling (the luma's factors; chroma 1x1) makes a sound JPEG, the
    tests' sources of the samplings TurboJPEG cannot name (4:4:1, 4:1:0)."""
    from PIL import Image

    data = jpeg.encode_rgb(photo, 95, sampling)
    sof = data.index(b"\xff\xc0")
    assert data[sof + 11] == factors
    assert data[sof + 14] == data[sof + 17] == 0x11
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(float)
    assert 10 * np.log10(255**2 / np.mean((decoded - photo) ** 2)) > 30


def test_encode_rgb_refuses_what_it_cannot_encode(photo: np.ndarray) -> None:
    with pytest.raises(ValueError, match="subsampling"):
        jpeg.encode_rgb(photo, 90, "4:2:0")
    with pytest.raises(ValueError, match="channels"):
        jpeg.encode_rgb(np.zeros((8, 8, 4), np.uint8), 90)
    with pytest.raises(ValueError, match="quality"):
        jpeg.encode_rgb(photo, 101)
    with pytest.raises(ValueError, match="contiguous"):
        jpeg.encode_rgb(photo[:, ::2], 90)


def test_cmyk_is_converted_as_simplejpeg_does(photo: np.ndarray, decoder: object) -> None:
    data = encode_pillow(photo, "CMYK")
    height, width = photo.shape[:2]
    whole = simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=True)
    assert whole.shape == (height, width, 3)
    for y, x, h, w in random_windows(np.random.default_rng(4), height, width, 30):
        got = jpeg.decode_window(decoder, data, height, width, 8, y, h, x, w)
        np.testing.assert_array_equal(got, whole[y : y + h, x : x + w])


# -- the range kernel ---------------------------------------------------------------


class Range:
    """Payloads of several images packed into one buffer, as a batch's source is."""

    def __init__(self, payloads: list[bytes], shapes: list[tuple[int, int]],
                 raw: list[bool] | None = None) -> None:
        self.source = np.frombuffer(b"".join(payloads), np.uint8)
        self.sizes = np.array([len(p) for p in payloads], np.uint64)
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.uint64)
        self.raw = np.array(raw or [False] * len(payloads), np.uint8)
        self.heights = np.array([s[0] for s in shapes], np.int64)
        self.widths = np.array([s[1] for s in shapes], np.int64)

    def run(self, decoder: object, crops: np.ndarray, flips: np.ndarray, out: np.ndarray,
            scale: object = None, bias: object = None, min_scale: int = 8,
            workspace: Workspace | None = None, **watch: object) -> tuple[int, str] | None:
        return jpeg.decode_crop_resize_range(
            decoder, self.source, self.starts, self.sizes, self.raw, self.heights, self.widths,
            np.ascontiguousarray(crops, np.int64), np.ascontiguousarray(flips, np.uint8), out,
            scale, bias, workspace or Workspace(), True, min_scale, **watch)


@pytest.fixture(scope="module")
def pictures(images: list[np.ndarray]) -> list[np.ndarray]:
    return images[:12]


def crops_for(rng: np.random.Generator, shapes: list[tuple[int, int]]) -> np.ndarray:
    return np.array([random_windows(rng, h, w, 1)[0] for h, w in shapes], np.int64)


@pytest.mark.parametrize(("dtype", "normalise"), [(np.uint8, False), (np.float16, False),
                                                  (np.float32, True)],
                         ids=["uint8", "float16", "float32-normalised"])
@pytest.mark.parametrize("marked", [False, True], ids=["plain", "markers"])
def test_range_is_todays_decode_then_crop_resize(pictures: list[np.ndarray], decoder: object,
                                                 dtype: type, normalise: bool,
                                                 marked: bool) -> None:
    """Mixed JPEG and raw samples, random crops and flips: exactly what decoding the
    whole image (simplejpeg, fastdct) and ``crop_resize_into`` give, with or
    without restart markers (the writer's JPEGs have them)."""
    raw = [k % 3 == 2 for k in range(len(pictures))]
    payloads = [p.tobytes() if r else encode_marked(p) if marked else encode(p)
                for p, r in zip(pictures, raw, strict=True)]
    shapes = [p.shape[:2] for p in pictures]
    batch = Range(payloads, shapes, raw)
    rng = np.random.default_rng(7)
    crops = crops_for(rng, shapes)
    flips = rng.random(len(pictures)) < 0.5
    scale = [1 / 58.4, 1 / 57.1, 1 / 57.4] if normalise else None
    bias = [-2.1, -2.0, -1.8] if normalise else None
    out = np.full((len(pictures), 33, 29, 3), 77, dtype)
    assert batch.run(decoder, crops, flips, out, scale, bias) is None
    for k, (payload, r) in enumerate(zip(payloads, raw, strict=True)):
        image = pictures[k] if r else simplejpeg.decode_jpeg(payload, fastdct=True)
        expected = np.empty((33, 29, 3), dtype)
        crop_resize_into(image, *crops[k], expected, bool(flips[k]), scale, bias)
        np.testing.assert_array_equal(out[k], expected, err_msg=f"sample {k}")


def test_the_range_kernel_notes_the_sample_it_decodes(pictures: list[np.ndarray],
                                                     decoder: object) -> None:
    """Given a worker process's progress cells, the kernel notes in ``progress[1]``
    the dataset index of the sample it decodes, -1 once the range is done, and the
    failing sample's after a failure; the range's id (``progress[0]``) is left alone."""
    payloads = [encode(p) for p in pictures[:4]]
    shapes = [p.shape[:2] for p in pictures[:4]]
    crops = crops_for(np.random.default_rng(2), shapes)
    flips = np.zeros(4, np.uint8)
    out = np.empty((4, 16, 16, 3), np.uint8)
    samples = np.array([40, 17, 93, 5], np.int64)
    progress = np.array([7, 123], np.int64)
    assert Range(payloads, shapes).run(decoder, crops, flips, out, progress=progress,
                                       samples=samples) is None
    assert progress.tolist() == [7, -1]
    broken = bytearray(payloads[2])
    broken[2:12] = bytes(10)  # no JPEG header: libjpeg refuses it as it starts
    k, _ = Range([*payloads[:2], bytes(broken), payloads[3]], shapes).run(
        decoder, crops, flips, out, progress=progress, samples=samples)
    assert k == 2
    assert progress.tolist() == [7, 93]
    batch = Range(payloads, shapes)
    with pytest.raises(ValueError, match="samples holds 3 indices, the range has 4"):
        batch.run(decoder, crops, flips, out, progress=progress, samples=samples[:3])
    with pytest.raises(ValueError, match="progress holds 1 cells"):
        batch.run(decoder, crops, flips, out, progress=progress[:1], samples=samples)
    with pytest.raises(ValueError, match="progress without samples"):
        batch.run(decoder, crops, flips, out, progress=progress)


@pytest.mark.parametrize("size", [(24, 20), (64, 64)])
def test_dct_scaling_stays_within_tolerance_of_a_full_decode(photo: np.ndarray, decoder: object,
                                                             size: tuple[int, int]) -> None:
    """At M/8 < 1 (``min_scale`` below 8; the crop decoders keep 8) the output is
    close to a full decode + area resize, not equal: every image's PSNR above
    20 dB and the mean difference under 6 levels (measured: 22.6 dB and 4.0
    at worst over 300 crops of 256 px photographs to 24x20)."""
    payloads = [encode(np.ascontiguousarray(photo[:, k * 10 : k * 10 + 300])) for k in range(4)]
    shapes = [(256, 300)] * 4
    batch = Range(payloads, shapes)
    rng = np.random.default_rng(3)
    crops = np.array([[int(rng.integers(0, 40)), int(rng.integers(0, 40)), 200, 240]
                      for _ in range(4)], np.int64)
    flips = np.zeros(4, np.uint8)
    scaled = np.empty((4, *size, 3), np.uint8)
    full = np.empty_like(scaled)
    assert batch.run(decoder, crops, flips, scaled, min_scale=1) is None
    assert batch.run(decoder, crops, flips, full) is None
    assert not np.array_equal(scaled, full)  # it did scale
    for k in range(4):
        expected = np.empty((*size, 3), np.uint8)
        crop_resize_into(simplejpeg.decode_jpeg(payloads[k], fastdct=True), *crops[k], expected)
        np.testing.assert_array_equal(full[k], expected)
        error = scaled[k].astype(np.float64) - expected
        psnr = 10 * np.log10(255**2 / np.mean(error**2))
        assert psnr > 20, f"sample {k}: {psnr:.1f} dB"
        assert np.abs(error).mean() < 6


def test_errors_stop_the_range_at_the_sample(pictures: list[np.ndarray],
                                             decoder: object) -> None:
    payloads = [encode(p) for p in pictures[:5]]
    shapes = [p.shape[:2] for p in pictures[:5]]
    payloads[3] = payloads[3][: len(payloads[3]) // 2]  # truncated
    batch = Range(payloads, shapes)
    crops = np.array([[0, 0, h, w] for h, w in shapes], np.int64)
    out = np.zeros((5, 16, 16, 3), np.uint8)
    failed = batch.run(decoder, crops, np.zeros(5, np.uint8), out)
    assert failed is not None
    assert failed[0] == 3
    assert failed[1].startswith("corrupt JPEG payload: ")
    assert "premature end" in failed[1].lower()
    assert out[:3].any()
    assert not out[3:].any()


@pytest.mark.parametrize(("damage", "message"), [
    (lambda data: data[:2] + bytes(200) + data[202:], "corrupt JPEG payload"),
    (lambda data: b"\xff\xd8" + b"\x00" * 40, "corrupt JPEG payload"),
    (lambda data: data[: len(data) - 400], "corrupt JPEG payload"),
    (lambda data: data[:1000] + bytes(range(256)) * 4 + data[2024:], "corrupt JPEG payload"),
], ids=["garbage-header", "no-markers", "truncated", "garbage-entropy-data"])
def test_corrupt_jpegs_are_errors_and_the_decoder_stays_usable(photo: np.ndarray,
                                                               decoder: object, damage: object,
                                                               message: str) -> None:
    good = encode(photo)
    bad = damage(good)  # type: ignore[operator]
    height, width = photo.shape[:2]
    batch = Range([bad, good], [(height, width)] * 2)
    crops = np.array([[0, 0, height, width]] * 2, np.int64)
    out = np.zeros((2, 32, 32, 3), np.uint8)
    failed = batch.run(decoder, crops, np.zeros(2, np.uint8), out)
    assert failed is not None
    assert failed[0] == 0
    assert failed[1].startswith(message)
    # the same decoder decodes the next image as usual
    assert Range([good], [(height, width)]).run(decoder, crops[:1], np.zeros(1, np.uint8),
                                                out[1:]) is None
    expected = np.empty((32, 32, 3), np.uint8)
    crop_resize_into(simplejpeg.decode_jpeg(good, fastdct=True), 0, 0, height, width, expected)
    np.testing.assert_array_equal(out[1], expected)


def test_header_size_must_match_the_metadata(photo: np.ndarray, decoder: object) -> None:
    height, width = photo.shape[:2]
    batch = Range([encode(photo)], [(height + 8, width)])
    out = np.zeros((1, 8, 8, 3), np.uint8)
    failed = batch.run(decoder, np.array([[0, 0, 8, 8]]), np.zeros(1, np.uint8), out)
    assert failed == (0, f"JPEG is {height}×{width}, the metadata says {height + 8}×{width}")


def test_short_raw_payload_and_bad_crop(photo: np.ndarray, decoder: object) -> None:
    out = np.zeros((1, 8, 8, 3), np.uint8)
    batch = Range([photo[:10].tobytes()], [(20, photo.shape[1])], raw=[True])
    failed = batch.run(decoder, np.array([[0, 0, 8, 8]]), np.zeros(1, np.uint8), out)
    assert failed is not None
    assert "is short of 20×" in failed[1]
    batch = Range([encode(photo)], [photo.shape[:2]])
    with pytest.raises(ValueError, match="exceeds"):
        batch.run(decoder, np.array([[250, 0, 8, 8]]), np.zeros(1, np.uint8), out)


def test_payload_outside_the_source(photo: np.ndarray, decoder: object) -> None:
    batch = Range([encode(photo)], [photo.shape[:2]])
    batch.sizes[0] += 10
    out = np.zeros((1, 8, 8, 3), np.uint8)
    failed = batch.run(decoder, np.array([[0, 0, 8, 8]]), np.zeros(1, np.uint8), out)
    assert failed is not None
    assert "outside the data" in failed[1]


@pytest.mark.parametrize("raw", [False, True], ids=["jpeg", "raw"])
def test_arguments_that_would_wrap_are_refused(photo: np.ndarray, decoder: object,
                                               raw: bool) -> None:
    """A start near 2**64 whose sum with the size wraps round to a small number (it
    passed the bounds check: libjpeg read before the buffer, the resize pass 16
    bytes before it), and sides past 65,535 (their product wrapped round in the
    short-payload check, and int cut them for libjpeg): refused before any pixel is
    read (found by a fuzz campaign under AddressSanitizer; a file's checks stop both
    before the loader gets here)."""
    payload = photo[:16, :16].tobytes() if raw else encode(photo)
    batch = Range([payload], [(16, 16) if raw else photo.shape[:2]], [raw])
    out = np.zeros((1, 8, 8, 3), np.uint8)
    window, flips = np.array([[0, 0, 8, 8]]), np.zeros(1, np.uint8)
    batch.starts[0], batch.sizes[0] = 2**64 - 16, 16 + len(payload)
    failed = batch.run(decoder, window, flips, out)
    assert failed is not None
    assert failed == (0, f"payload of {16 + len(payload)} bytes at {2**64 - 16} is outside "
                         "the data")
    batch = Range([payload], [(2**32, 2**32)], [raw])
    failed = batch.run(decoder, np.array([[2**31, 0, 1, 1]]), flips, out)
    assert failed == (0, "stored 4294967296×4294967296: a side past 65535 pixels")


def test_decode_window_refuses_windows_outside_the_image(photo: np.ndarray,
                                                         decoder: object) -> None:
    data = encode(photo)
    with pytest.raises(ValueError, match="exceeds"):
        jpeg.decode_window(decoder, data, 256, 341, 8, 250, 10, 0, 10)
    with pytest.raises(ValueError, match="not 255×341"):
        jpeg.decode_window(decoder, data, 255, 341, 8, 0, 10, 0, 10)


def test_a_jpeg_decoder_is_not_pickled() -> None:
    with pytest.raises(TypeError, match="cannot pickle"):
        pickle.dumps(jpeg.JpegDecoder())


# -- fastforward's Huffman decoder (jpeg_huffman.h) against libjpeg's ---------------


def libjpeg_decoder() -> object:
    decoder = jpeg.JpegDecoder()
    decoder.libjpeg_huffman = True
    return decoder


def noise_photo(photo: np.ndarray) -> np.ndarray:
    """The photograph with strong noise: large AC values and long codes at quality 100."""
    rng = np.random.default_rng(3)
    return np.clip(photo + rng.normal(0, 60, photo.shape), 0, 255).astype(np.uint8)


HUFFMAN_KINDS = {
    **KINDS,
    "411": lambda image: encode(image, "411"),
    "440": lambda image: encode(image, "440"),
    "quality-5": lambda image: encode(image, "420", 5),
    "quality-100-444": lambda image: encode(image, "444", 100),
    # optimised tables: other codes, and some longer than the decoder looks up at once
    "optimised-tables": lambda image: encode_pillow(image, optimize=True),
    # standard tables' longest codes (up to 16 bits), values of up to 10 bits
    "noise-quality-100": lambda image: encode_pillow(noise_photo(image), quality=100,
                                                     subsampling=0),
    "noise-quality-100-markers-every-3-mcus": lambda image: encode_pillow(
        noise_photo(image), quality=100, restart_marker_blocks=3),
    "grayscale-markers-every-7-mcus": lambda image: encode_pillow(image, "L",
                                                                  restart_marker_blocks=7),
    "flat": lambda image: encode(np.full_like(image, 117), "420"),
}


@pytest.mark.parametrize("kind", HUFFMAN_KINDS)
def test_own_huffman_decoder_gives_libjpegs_pixels(photo: np.ndarray, kind: str) -> None:
    """The same pixels, so the same coefficients: whole images, windows (with and
    without starting at the markers) at every DCT scale, and planes."""
    data = HUFFMAN_KINDS[kind](photo)
    height, width = photo.shape[:2]
    decoder, reference = jpeg.JpegDecoder(), libjpeg_decoder()
    rng = np.random.default_rng(len(kind))
    for scale in (8, 4, 2, 1):
        sh, sw = -(-height * scale // 8), -(-width * scale // 8)
        for y, x, h, w in [(0, 0, sh, sw), *random_windows(rng, sh, sw, 12)]:
            for restarts in (True, False):
                got = jpeg.decode_window(decoder, data, height, width, scale, y, h, x, w,
                                         restarts=restarts)
                assert decoder.own_huffman != (kind == "progressive")
                expected = jpeg.decode_window(reference, data, height, width, scale, y, h, x,
                                              w, restarts=restarts)
                assert not reference.own_huffman
                np.testing.assert_array_equal(got, expected, err_msg=f"{scale}/8 {h}x{w} "
                                              f"at ({y}, {x}), restarts={restarts}")
        planes = jpeg.decode_planes(decoder, data, scale)
        expected_planes = jpeg.decode_planes(reference, data, scale)
        assert (planes is None) == (expected_planes is None)
        for got_plane, expected_plane in zip(planes or [], expected_planes or [], strict=True):
            np.testing.assert_array_equal(got_plane, expected_plane)


def test_each_images_tables_are_used(photo: np.ndarray) -> None:
    """One decoder, JPEGs with different Huffman tables in turn (it keeps the
    tables it derived while the next image's are the same)."""
    height, width = photo.shape[:2]
    kinds = ["optimised-tables", "420", "noise-quality-100", "420-markers",
             "optimised-tables", "grayscale"]
    shared, reference = jpeg.JpegDecoder(), libjpeg_decoder()
    for kind in kinds * 2:
        data = HUFFMAN_KINDS[kind](photo)
        np.testing.assert_array_equal(
            jpeg.decode_window(shared, data, height, width, 8, 0, height, 0, width),
            jpeg.decode_window(reference, data, height, width, 8, 0, height, 0, width),
            err_msg=kind)


def test_small_images_with_new_tables_go_to_libjpeg(photos: list[np.ndarray]) -> None:
    """Deriving tables costs what the decoder saves on ~1,400 blocks: an image of
    fewer than 4,096 blocks whose tables are not the last ones derived is
    decoded by libjpeg, unless the last image left to libjpeg had the same
    tables (they recur)."""
    small, large = (np.ascontiguousarray(photos[0][:64, :96]),
                    np.ascontiguousarray(photos[2][:400, :600]))
    first, second = (encode_pillow(small, optimize=True),
                     encode_pillow(small, optimize=True, quality=60))
    big = encode_pillow(large, optimize=True, quality=70)
    decoder, reference = jpeg.JpegDecoder(), libjpeg_decoder()
    used = []
    for data, image in [(first, small), (second, small), (second, small), (second, small),
                        (first, small), (big, large), (first, small), (first, small)]:
        height, width = image.shape[:2]
        got = jpeg.decode_window(decoder, data, height, width, 8, 0, height, 0, width)
        used.append(decoder.own_huffman)
        np.testing.assert_array_equal(
            got, jpeg.decode_window(reference, data, height, width, 8, 0, height, 0, width))
    # the first image's tables are derived (none were); then the large image's,
    # and small images' tables when the last image left to libjpeg had them too
    assert used == [True, False, True, True, False, True, True, True]


def damaged(rng: np.random.Generator, data: bytes, how: int) -> bytes:
    """data with its entropy-coded data damaged: bytes changed, a bit flipped,
    or cut short."""
    start = data.index(b"\xff\xda") + 14
    out = bytearray(data)
    if how == 0:
        for _ in range(int(rng.integers(1, 4))):
            out[int(rng.integers(start, len(out) - 2))] = int(rng.integers(0, 256))
    elif how == 1:
        out[int(rng.integers(start, len(out) - 2))] ^= 1 << int(rng.integers(0, 8))
    else:
        del out[int(rng.integers(start, len(out))):]
    return bytes(out)


def test_damaged_data_is_an_error_wherever_libjpeg_finds_it(photos: list[np.ndarray]) -> None:
    """On 600 damaged JPEGs (with and without markers, standard and optimised
    tables): where libjpeg reports an error, so does fastforward's decoder (but
    for data cut short past what the window needs); where both decode, the
    pixels are the same. fastforward's is stricter:
    libjpeg's fast path decodes a bad code as a zero (no warning) and drops a
    restart interval's extra bytes where it has already met the marker; both
    are errors here. Nothing is read outside the data (run under valgrind when
    the decoder changes)."""
    rng = np.random.default_rng(11)
    own, reference = jpeg.JpegDecoder(), libjpeg_decoder()
    sources = []
    for photo in photos[:3]:
        image = np.ascontiguousarray(photo[:120, :170])
        sources += [encode_marked(image), encode(image, "420"),
                    encode_pillow(image, quality=95, restart_marker_blocks=3),
                    encode_pillow(image, quality=100, subsampling=0, optimize=True)]
    stricter = 0
    for t in range(600):
        data = damaged(rng, sources[t % len(sources)], t % 3)
        scale = (8, 4, 2, 1)[t % 4]
        sh, sw = -(-120 * scale // 8), -(-170 * scale // 8)
        window = random_windows(rng, sh, sw, 1)[0]
        results = []
        for decoder in (own, reference):
            try:
                results.append(jpeg.decode_window(decoder, data, 120, 170, scale, window[0],
                                                  window[2], window[1], window[3],
                                                  restarts=bool(t % 2)))
            except ValueError as error:
                results.append(str(error))
        got, expected = results
        if isinstance(expected, str) and not isinstance(got, str):
            # both read ahead of what they need, and fastforward's decoder fails at
            # the end of the data only where a code needs bits past it: a window
            # that ends just before where the data was cut short is all there
            # (its pixels are the intact JPEG's)
            assert expected == "Premature end of JPEG file", f"case {t}: {expected}"
            intact = jpeg.decode_window(reference, sources[t % len(sources)], 120, 170, scale,
                                        window[0], window[2], window[1], window[3])
            np.testing.assert_array_equal(got, intact, err_msg=f"case {t}")
        elif isinstance(got, str) and not isinstance(expected, str):
            stricter += 1
            assert got.startswith("Corrupt JPEG data"), got
        elif not isinstance(got, str):
            np.testing.assert_array_equal(got, expected, err_msg=f"case {t}")
    assert stricter < 30  # a few percent of the cases
    # and the decoder is as good as new
    good = sources[0]
    np.testing.assert_array_equal(jpeg.decode_window(own, good, 120, 170, 8, 0, 120, 0, 170),
                                  jpeg.decode_window(reference, good, 120, 170, 8, 0, 120, 0,
                                                     170))


@pytest.mark.parametrize("kind", ["420", "420-markers", "grayscale", "quality-5", "411"])
def test_data_cut_short_past_a_window_still_decodes_it(photo: np.ndarray, kind: str) -> None:
    """A JPEG cut short (no end-of-image marker, the last rows' data missing):
    wherever libjpeg decodes a window from what is left, so does fastforward's
    decoder, with the same pixels. It reads ahead of what it needs (up to 8
    bytes), so at the end of the data it stops and fails only where a code
    needs bits that are not there, as libjpeg does, with libjpeg's message."""
    image = np.ascontiguousarray(photo[:96, :120])
    data = HUFFMAN_KINDS[kind](image)
    height, width = image.shape[:2]
    own, reference = jpeg.JpegDecoder(), libjpeg_decoder()
    start = data.index(b"\xff\xda") + 14
    decoded = 0
    for cut in range(start + 16, len(data), 5):
        for y, h, restarts in ((0, 16, False), (0, 40, False), (33, 20, True)):
            try:
                expected = jpeg.decode_window(reference, data[:cut], height, width, 8, y, h,
                                              0, width, restarts=restarts)
            except ValueError:
                continue
            got = jpeg.decode_window(own, data[:cut], height, width, 8, y, h, 0, width,
                                     restarts=restarts)
            np.testing.assert_array_equal(got, expected, err_msg=f"cut at {cut}, rows {y}+{h}")
            decoded += 1
    assert decoded > 0
    with pytest.raises(ValueError, match="Premature end of JPEG file"):
        jpeg.decode_window(own, data[:len(data) // 2], height, width, 8, 0, height, 0, width)


def test_the_environment_chooses_the_huffman_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTFORWARD_HUFFMAN", "libjpeg")
    assert jpeg.JpegDecoder().libjpeg_huffman
    monkeypatch.setenv("FASTFORWARD_HUFFMAN", "fastforward")
    assert not jpeg.JpegDecoder().libjpeg_huffman
    monkeypatch.setenv("FASTFORWARD_HUFFMAN", "turbo")
    with pytest.raises(ValueError, match="FASTFORWARD_HUFFMAN='turbo'"):
        jpeg.JpegDecoder()


# -- the writer's path: source JPEG to stored JPEG in YCbCr (shrink_jpeg) -----------


def pillow_ycbcr(data: bytes) -> np.ndarray:
    """Pillow's libjpeg output without colour conversion: Y, Cb, Cr (chroma upsampled)."""
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    image.draft("YCbCr", image.size)
    return np.asarray(image)


@pytest.mark.parametrize("kind", ["420", "422", "444", "progressive", "pillow-444",
                                  "grayscale", "420-markers"])
def test_planes_are_the_components_libjpeg_decodes(photo: np.ndarray, decoder: object,
                                                   kind: str) -> None:
    """Y exactly as Pillow's libjpeg gives it without colour conversion; Cb and Cr
    too where they are not subsampled (Pillow upsamples subsampled ones)."""
    image = photo[:201, :333]
    data = KINDS[kind](image)
    planes = jpeg.decode_planes(decoder, data)
    if kind == "grayscale":
        from PIL import Image

        assert len(planes) == 1
        np.testing.assert_array_equal(planes[0], np.asarray(Image.open(io.BytesIO(data))))
        return
    ycbcr = pillow_ycbcr(data)
    sampling = simplejpeg.decode_jpeg_header(data)[3]
    chroma = {"444": (201, 333), "422": (201, 167), "420": (101, 167)}[sampling]
    assert [p.shape for p in planes] == [(201, 333), chroma, chroma]
    np.testing.assert_array_equal(planes[0], ycbcr[..., 0])
    if sampling == "444":
        np.testing.assert_array_equal(np.stack(planes, -1), ycbcr)


def test_planes_refuse_other_colour_spaces_and_samplings(photo: np.ndarray,
                                                         decoder: object) -> None:
    assert jpeg.decode_planes(decoder, encode_pillow(photo, "CMYK")) is None
    # chroma sampled finer than luma (the Cb component's factors made 2x2)
    data = bytearray(encode(photo, "444"))
    sof = data.index(b"\xff\xc0")
    assert data[sof + 9] == 3  # three components
    assert data[sof + 14] == 0x11  # Cb's factors
    data[sof + 14] = 0x22
    assert jpeg.decode_planes(decoder, bytes(data)) is None
    assert jpeg.shrink_jpeg(decoder, bytes(data), 10, 10, 8, 90) is None
    # and the decoder is still good
    assert jpeg.decode_planes(decoder, encode(photo))[0].shape == photo.shape[:2]


CHROMA_DIVISORS = {"444": (1, 1), "422": (1, 2), "420": (2, 2), "440": (2, 1), "Gray": (1, 1)}
SHRINK_SIZES = [((201, 333), (97, 161)), ((256, 341), (192, 255)), ((64, 64), (64, 64)),
                ((17, 33), (1, 1)), ((40, 300), (7, 255)), ((256, 41), (255, 1)),
                ((15, 15), (15, 15))]


@pytest.mark.parametrize("kind", ["420", "422", "444", "progressive", "grayscale"])
@pytest.mark.parametrize(("size", "target"), SHRINK_SIZES,
                         ids=[f"{s[0]}x{s[1]}-to-{t[0]}x{t[1]}" for s, t in SHRINK_SIZES])
def test_each_stored_plane_is_its_source_planes_area_resize(
        photo: np.ndarray, decoder: object, kind: str, size: tuple[int, int],
        target: tuple[int, int]) -> None:
    """At quality 100, within two levels of the NumPy reference (0.2 on average; the
    quantisation at quality 100 alone moves a value by up to 2): each source plane
    shrunk by area averaging to the stored plane's size (luma to the target, chroma
    to half of it each way, 4:2:0) over the span of the image it stands for (half
    a sample less where a subsampled side is odd, so that chroma stays registered
    with luma), and neutral chroma for a grayscale source."""
    data = KINDS[kind](photo[: size[0], : size[1]])
    source = jpeg.decode_planes(decoder, data)
    out = jpeg.shrink_jpeg(decoder, data, *target, 8, 100, 1, Workspace())
    assert simplejpeg.decode_jpeg_header(out) == (*target, "YCbCr", "420")
    stored = jpeg.decode_planes(decoder, out)
    half = ((target[0] + 1) // 2, (target[1] + 1) // 2)
    assert [p.shape for p in stored] == [target, half, half]
    # what each plane covers, in its own samples: a chroma plane of an odd side's
    # last sample stands for half a pair of pixels
    down = CHROMA_DIVISORS[simplejpeg.decode_jpeg_header(data)[3]]
    for c, plane in enumerate(stored):
        if c >= len(source):
            assert (plane == 128).all()
            continue
        spans = (size[0], size[1], *target) if c == 0 else (
            size[0] / down[0], size[1] / down[1], target[0] / 2, target[1] / 2)
        expected = crop_resize(source[c][..., None], 0, 0, *source[c].shape, *plane.shape,
                               spans=spans)
        error = np.abs(plane.astype(int) - expected[..., 0])
        assert error.max() <= 2, c
        assert error.mean() < 0.2, c


def test_shrink_jpeg_is_as_close_to_the_full_decode_as_the_rgb_path(
        jpeg_folder: object, decoder: object) -> None:
    """Against a full decode (accurate IDCT, smooth chroma upsampling) shrunk by area
    averaging in RGB, the stored image (quality 90) is as close as the RGB path's:
    decode (fast upsampling), shrink, encode. Measured on 40 photographs: luma
    closer, chroma slightly further (its plane is shrunk at its own size)."""
    from fastforward.fields.rgb_image import target_size

    workspace = Workspace()
    differences = []
    for path in sorted(jpeg_folder.glob("*/*.jpg")):
        data = path.read_bytes()
        h, w = simplejpeg.decode_jpeg_header(data)[:2]
        for side in (256, 160):
            th, tw = target_size(h, w, side, None)
            reference = np.empty((th, tw, 3), np.uint8)
            crop_resize_into(simplejpeg.decode_jpeg(data), 0, 0, h, w, reference)
            rgb = np.empty_like(reference)
            crop_resize_into(simplejpeg.decode_jpeg(data, fastupsample=True), 0, 0, h, w, rgb)
            rgb_path = simplejpeg.decode_jpeg(jpeg.encode_rgb(rgb, 90, "420", 1))
            ycbcr_path = simplejpeg.decode_jpeg(jpeg.shrink_jpeg(
                decoder, data, th, tw, 8, 90, 1, workspace))
            new, old = psnr(ycbcr_path, reference), psnr(rgb_path, reference)
            assert new > 30, (path.name, side)
            assert new > old - 1.5, (path.name, side, new, old)
            differences.append(new - old)
    assert np.median(differences) > -0.3


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255**2 / np.mean((a.astype(float) - b.astype(float)) ** 2)))


def test_shrink_jpeg_at_a_dct_scale(photos: list[np.ndarray], decoder: object) -> None:
    """Decoded at 1/2 (the source still at least twice the target there, the
    writer's rule), then shrunk: about as close to a full decode shrunk in RGB as
    the full-size decode."""
    image = np.ascontiguousarray(np.concatenate([photos[0], photos[0]], 1)[:512, :1024])
    data = encode(image, "420", 95)
    reference = np.empty((96, 192, 3), np.uint8)
    crop_resize_into(simplejpeg.decode_jpeg(data), 0, 0, 512, 1024, reference)
    full, half = (psnr(simplejpeg.decode_jpeg(jpeg.shrink_jpeg(decoder, data, 96, 192, scale,
                                                               95, 1)), reference)
                  for scale in (8, 4))
    assert full > 33
    assert half > full - 1, (full, half)
    with pytest.raises(ValueError, match="smaller than 96x192"):
        jpeg.shrink_jpeg(decoder, data, 96, 192, 1, 95, 1)


@pytest.mark.parametrize("sampling", ["420", "422", "440", "444"])
@pytest.mark.parametrize("scale", [8, 2, 1])
def test_chroma_stays_registered_with_luma(photos: list[np.ndarray], decoder: object,
                                           sampling: str, scale: int) -> None:
    """A 517×771 source (odd sides: each plane's last sample stands for part of
    one, differently in each plane and at each DCT scale) stored at 64×96: as
    close to a full decode shrunk in RGB as the RGB path decoding at the same
    scale, on a colour gradient and on a photograph. Each plane resized from its
    rounded-up size instead lost 2-4 dB here (4:2:2 and 4:4:0 below 8/8)."""
    height, width = 517, 771
    yy, xx = np.mgrid[0:height, 0:width]
    gradient = np.stack([xx * 255 / width, yy * 255 / height, 255 - xx * 255 / width], -1)
    photo = np.tile(photos[0], (2, 2, 1))[:height, :width]
    for image in (gradient, photo):
        data = encode(np.clip(image, 0, 255).astype(np.uint8), sampling, 95)
        reference = np.empty((64, 96, 3), np.uint8)
        crop_resize_into(simplejpeg.decode_jpeg(data), 0, 0, height, width, reference)
        sh, sw = (height * scale + 7) // 8, (width * scale + 7) // 8
        rgb = np.empty_like(reference)
        crop_resize_into(jpeg.decode_window(decoder, data, height, width, scale, 0, sh, 0, sw,
                                            False, False), 0, 0, sh, sw, rgb)
        rgb_path = psnr(simplejpeg.decode_jpeg(jpeg.encode_rgb(rgb, 95, "420", 1)), reference)
        ycbcr_path = psnr(simplejpeg.decode_jpeg(jpeg.shrink_jpeg(decoder, data, 64, 96, scale,
                                                                  95, 1)), reference)
        assert ycbcr_path > rgb_path - 0.3, (ycbcr_path, rgb_path)


def test_unusual_samplings_are_declined(photo: np.ndarray, decoder: object) -> None:
    """4:1:1 (luma 4 times each chroma sample across) goes through RGB."""
    data = encode(photo, "411")
    assert jpeg.decode_planes(decoder, data) is None
    assert jpeg.shrink_jpeg(decoder, data, 10, 10, 8, 90) is None


def test_shrink_jpeg_puts_a_restart_marker_at_each_mcu_row(photo: np.ndarray,
                                                          decoder: object) -> None:
    data = encode(photo)
    out = jpeg.shrink_jpeg(decoder, data, 150, 200, 8, 90, 1)
    dri = out.index(b"\xff\xdd")
    assert int.from_bytes(out[dri + 4 : dri + 6], "big") == -(-200 // 16)
    assert out.count(b"\xff\xd0") == ((-(-150 // 16) - 1) + 7) // 8  # RST0 .. RST7, RST0
    plain = jpeg.shrink_jpeg(decoder, data, 150, 200, 8, 90, 0)
    assert b"\xff\xdd" not in plain
    np.testing.assert_array_equal(simplejpeg.decode_jpeg(plain), simplejpeg.decode_jpeg(out))
    # and the crop decoders start at the markers of the stored image
    window = jpeg.decode_window(decoder, out, 150, 200, 8, 100, 20, 30, 40)
    assert decoder.restart_row > 0
    np.testing.assert_array_equal(window, simplejpeg.decode_jpeg(out, fastdct=True)[100:120,
                                                                                    30:70])


def damaged_whole(rng: np.random.Generator, data: bytes, how: int) -> bytes:
    """*data* damaged where a whole-image decode would notice it only at the end or
    not at all: 20 bytes of its entropy-coded data overwritten, a bit flipped, its
    end-of-image marker dropped, or a few bytes put before it."""
    start = data.index(b"\xff\xda") + 14
    out = bytearray(data)
    if how == 0:
        at = int(rng.integers(start, len(out) - 22))
        out[at : at + 20] = rng.integers(0, 256, 20, dtype=np.uint8).tobytes()
    elif how == 1:
        out[int(rng.integers(start, len(out) - 2))] ^= 1 << int(rng.integers(0, 8))
    elif how == 2:
        del out[-2:]
    else:
        out[-2:-2] = rng.integers(0, 255, int(rng.integers(1, 12)), dtype=np.uint8).tobytes()
    return bytes(out)


def test_the_writers_decode_refuses_what_simplejpeg_refuses(photos: list[np.ndarray]) -> None:
    """Damaged data can decode to every row and leave bytes over before the
    end-of-image marker, which libjpeg reports only when it reads on to that
    marker (simplejpeg does, and so refuses the JPEG). The writer's decode
    (``decode_planes``, ``shrink_jpeg``) reads on too: on 240 damaged JPEGs, it
    refuses every one that simplejpeg refuses (a stored image is never made of
    data the RGB path would call corrupt), with fastforward's Huffman decoder
    and with libjpeg's. It may refuse more (bytes before the marker that
    libjpeg happened to read ahead): the writer then decodes to RGB, whose
    verdict stands. Where both decode, the planes are the same."""
    rng = np.random.default_rng(5)
    own, reference = jpeg.JpegDecoder(), libjpeg_decoder()
    sources = []
    for photo in photos[:3]:
        image = np.ascontiguousarray(photo[:200, :260])
        sources += [encode(image), encode_pillow(image, quality=95), encode_marked(image),
                    encode_pillow(image, quality=95, restart_marker_blocks=3)]
    refused = 0
    for t in range(240):
        data = damaged_whole(rng, sources[t % len(sources)], t % 4)
        try:
            simplejpeg.decode_jpeg(data)
            expected = None
        except ValueError as error:
            expected = str(error)
        results = []
        for decoder in (own, reference):
            try:
                results.append(jpeg.decode_planes(decoder, data))
            except ValueError as error:
                results.append(str(error))
            if expected is not None:
                assert isinstance(results[-1], str), f"case {t}: simplejpeg says {expected}"
                assert jpeg.shrink_jpeg(decoder, data, 100, 130, 8, 90) is None
        refused += expected is not None
        if not any(isinstance(r, str) for r in results):
            for got, want in zip(*results, strict=True):
                np.testing.assert_array_equal(got, want, err_msg=f"case {t}")
    assert refused > 100  # the damage is mostly seen
    # bytes before the end-of-image marker are refused, and the decoder is as good as new
    data = sources[0]
    padded = data[:-2] + bytes(range(1, 30)) + data[-2:]
    with pytest.raises(ValueError, match="Corrupt JPEG data"):
        jpeg.decode_planes(own, padded)
    for got, want in zip(jpeg.decode_planes(own, data), jpeg.decode_planes(reference, data),
                         strict=True):
        np.testing.assert_array_equal(got, want)


def test_shrink_jpeg_gives_none_for_what_it_cannot_decode(photo: np.ndarray,
                                                         decoder: object) -> None:
    """The writer then decodes to RGB, which reports what is wrong."""
    data = encode(photo)
    for bad in (b"", data[: len(data) // 2], b"\xff\xd8" + b"\x00" * 100,
                encode_pillow(photo, "CMYK")):
        assert jpeg.shrink_jpeg(decoder, bad, 10, 10, 8, 90) is None
    assert jpeg.shrink_jpeg(decoder, data, 10, 10, 8, 90) is not None
    for args, message in [((0, 10, 8, 90), "cannot encode a 0x10"),
                          ((10, 10, 0, 90), "scale must be in"),
                          ((10, 10, 8, 101), "quality must be in"),
                          ((10, 10, 8, 90, -1), "restart_rows must be in")]:
        with pytest.raises(ValueError, match=message):
            jpeg.shrink_jpeg(decoder, data, *args)
