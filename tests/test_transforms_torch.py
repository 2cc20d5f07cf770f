"""The torch path of the random image transforms (flips, Cutout, mixup).

Each must give, on tensors of any device and in either layout ((B, H, W, C)
after ``ToTensor``, the (B, C, H, W) permuted view ``ToTorchImage`` makes),
exactly what its NumPy path gives for the same context, without touching
its input.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from harness import apply_checked, state_of

import fastforward.transforms as T
from fastforward.pipeline import AllocationQuery, BatchContext, Operation, State

torch = pytest.importorskip("torch", reason="torch is an optional extra")

H, W = 28, 17  # the smallest photo of the fixture is 28 high, 17 wide
B = 20

IMAGE_OPS: dict[str, Callable[[str], Operation]] = {
    "hflip": lambda kind: T.RandomHorizontalFlip(),
    "vflip": lambda kind: T.RandomVerticalFlip(0.7),
    "cutout": lambda kind: T.Cutout(8, (1, 2, 3) if kind == "uint8" else (0.5, -1.25, 2.0)),
    "cutout-whole": lambda kind: T.Cutout(min(H, W), (250, 0, 7) if kind == "uint8" else 9.5),
    "mixup": lambda kind: T.ImageMixup(0.4, False),
    "mixup-same-lambda": lambda kind: T.ImageMixup(0.4, True),
}
KINDS = ["uint8", "float32", "float16"]
LAYOUTS = ["hwc", "chw"]


# ---------------------------------------------------------------------------
# helpers


def context(indices: Any = None, epoch: int = 2) -> BatchContext:
    indices = np.arange(B) + 100 if indices is None else np.asarray(indices)
    return BatchContext(indices=indices, epoch=epoch, seed=7, stream=5)


def run(op: Operation, batch: Any, ctx: BatchContext, slots: int | None = None) -> Any:
    """Apply *op* as the loader does (see ``harness.apply_checked``)."""
    return apply_checked(op, batch, ctx, slots)[0]


def to_torch(batch: np.ndarray, layout: str, device: str = "cpu") -> Any:
    """A (B, H, W, C) array as ToTensor (hwc) or ToTensor + ToTorchImage (chw) give it."""
    tensor = torch.from_numpy(batch).to(device)
    return tensor if layout == "hwc" else tensor.permute(0, 3, 1, 2)


def to_numpy(tensor: Any, layout: str) -> np.ndarray:
    """Back to a (B, H, W, C) host array, for comparing with the NumPy path."""
    tensor = tensor.cpu()
    return (tensor if layout == "hwc" else tensor.permute(0, 2, 3, 1)).numpy()


@pytest.fixture(scope="module")
def batches(images: list[np.ndarray]) -> dict[str, np.ndarray]:
    """The 20 photographs, centre-cropped to H × W, as uint8 and float32 batches."""
    crops = []
    for image in images:
        y, x = (image.shape[0] - H) // 2, (image.shape[1] - W) // 2
        crops.append(image[y : y + H, x : x + W])
    uint8 = np.stack(crops)
    # normalised-looking floats, non-integer, of both signs
    float32 = ((uint8.astype(np.float32) - np.float32(117.3)) / np.float32(57.1))
    return {"uint8": uint8, "float32": float32, "float16": float32.astype(np.float16)}


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return (np.arange(B, dtype=np.int64) * 7 % 10).reshape(B, 1)


# ---------------------------------------------------------------------------
# torch path == NumPy path


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("make", IMAGE_OPS.values(), ids=IMAGE_OPS.keys())
def test_torch_matches_numpy(batches: dict[str, np.ndarray], make: Callable[[str], Operation],
                             kind: str, layout: str) -> None:
    batch = batches[kind]
    expected = run(make(kind), batch, context())
    tensor = to_torch(batch, layout)
    out = run(make(kind), tensor, context())
    assert out.dtype == tensor.dtype
    assert tuple(out.shape) == tuple(tensor.shape)
    np.testing.assert_array_equal(to_numpy(out, layout), expected)
    # the op changes something (the test would be vacuous otherwise)
    assert not np.array_equal(expected, batch)


@pytest.mark.parametrize("make", [T.RandomHorizontalFlip, T.RandomVerticalFlip,
                                  lambda: T.ImageMixup(0.4, False)])
def test_grayscale_torch_matches_numpy(batches: dict[str, np.ndarray],
                                       make: Callable[[], Operation]) -> None:
    gray = np.ascontiguousarray(batches["uint8"][..., 1])  # (B, H, W)
    expected = run(make(), gray, context())
    out = run(make(), torch.from_numpy(gray), context())
    np.testing.assert_array_equal(out.numpy(), expected)


@pytest.mark.parametrize("make", IMAGE_OPS.values(), ids=IMAGE_OPS.keys())
def test_torch_without_destination(batches: dict[str, np.ndarray],
                                   make: Callable[[str], Operation]) -> None:
    batch = batches["uint8"]
    expected = run(make("uint8"), batch, context())
    op = make("uint8")
    tensor = to_torch(batch, "chw")
    op.declare_state_and_memory(state_of(tensor))
    out = op.apply(tensor, None, context())
    np.testing.assert_array_equal(to_numpy(out, "chw"), expected)


def test_channels_last_layout_survives(batches: dict[str, np.ndarray]) -> None:
    tensor = to_torch(batches["uint8"], "chw")
    for make in IMAGE_OPS.values():
        out = run(make("uint8"), tensor, context())
        assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("same_lambda", [False, True])
def test_label_mixup_torch_matches_numpy(labels: np.ndarray, same_lambda: bool) -> None:
    expected = run(T.LabelMixup(0.4, same_lambda), labels, context())
    for batch in (labels, labels[:, 0].astype(np.int32)):
        out = run(T.LabelMixup(0.4, same_lambda), torch.from_numpy(batch), context())
        assert out.dtype == torch.float32
        np.testing.assert_array_equal(out.numpy(), expected)


def test_image_mixup_torch_follows_label_mixup(batches: dict[str, np.ndarray],
                                               labels: np.ndarray) -> None:
    rows = run(T.LabelMixup(0.4, False), torch.from_numpy(labels), context())
    assert torch.equal(rows[:, 1], torch.roll(rows[:, 0], 1))  # partner: the previous one
    image = torch.from_numpy(batches["float32"])
    out = run(T.ImageMixup(0.4, False), image.permute(0, 3, 1, 2), context())
    lam = rows[:, 2].view(B, 1, 1, 1)  # float32, as ImageMixup computes for float32
    torch.testing.assert_close(out.permute(0, 2, 3, 1),
                               lam * image + (1 - lam) * torch.roll(image, 1, 0))


# ---------------------------------------------------------------------------
# per-sample randomness follows the sample, not its position

POSITIONAL = {k: v for k, v in IMAGE_OPS.items() if not k.startswith("mixup")}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("make", POSITIONAL.values(), ids=POSITIONAL.keys())
def test_a_sample_gets_its_augmentation_at_any_position(
        batches: dict[str, np.ndarray], make: Callable[[str], Operation], layout: str) -> None:
    batch = batches["uint8"]
    indices = np.arange(B) + 1000
    perm = np.random.default_rng(5).permutation(B)
    plain = to_numpy(run(make("uint8"), to_torch(batch, layout), context(indices)), layout)
    moved = run(make("uint8"), to_torch(batch[perm], layout), context(indices[perm]))
    np.testing.assert_array_equal(to_numpy(moved, layout), plain[perm])
    # alone, in a smaller last batch written into a larger buffer
    few = perm[:3]
    alone = run(make("uint8"), to_torch(batch[few], layout), context(indices[few]), slots=B)
    np.testing.assert_array_equal(to_numpy(alone, layout), plain[few])


def test_mixup_lambda_follows_the_sample(labels: np.ndarray) -> None:
    indices = np.arange(B) + 1000
    perm = np.random.default_rng(6).permutation(B)
    plain = run(T.LabelMixup(1.0, False), torch.from_numpy(labels), context(indices))
    moved = run(T.LabelMixup(1.0, False), torch.from_numpy(labels[perm]), context(indices[perm]))
    assert torch.equal(moved[:, 2], plain[torch.from_numpy(perm), 2])


# ---------------------------------------------------------------------------
# declaration on torch states

TORCH_ERRORS: dict[str, tuple[Operation, State, type]] = {
    "flip-no-channels": (T.RandomHorizontalFlip(), State(jit_mode=False, shape=(H, W, 17),
                                                         dtype=torch.uint8), ValueError),
    "flip-labels": (T.RandomVerticalFlip(), State(jit_mode=False, shape=(1,),
                                                  dtype=torch.int64), ValueError),
    "cutout-too-big": (T.Cutout(W + 1), State(jit_mode=False, shape=(3, H, W),
                                              dtype=torch.uint8), ValueError),
    "cutout-fill": (T.Cutout(2, (1, 2)), State(jit_mode=False, shape=(H, W, 3),
                                               dtype=torch.float32), ValueError),
    "cutout-fill-range": (T.Cutout(2, (1, 2, 300)), State(jit_mode=False, shape=(3, H, W),
                                                          dtype=torch.uint8), ValueError),
    "mixup-bool": (T.ImageMixup(0.2, False), State(jit_mode=False, shape=(H, W, 3),
                                                   dtype=torch.bool), TypeError),
    "label-mixup-floats": (T.LabelMixup(0.2, False), State(jit_mode=False, shape=(1,),
                                                           dtype=torch.float32), TypeError),
}


@pytest.mark.parametrize(("op", "state", "error"), TORCH_ERRORS.values(),
                         ids=TORCH_ERRORS.keys())
def test_declare_rejects_bad_torch_input(op: Operation, state: State, error: type) -> None:
    with pytest.raises(error, match=type(op).__name__):
        op.declare_state_and_memory(state)


@pytest.mark.parametrize("make", IMAGE_OPS.values(), ids=IMAGE_OPS.keys())
def test_declare_asks_for_a_buffer_on_the_device(make: Callable[[str], Operation]) -> None:
    state = State(jit_mode=False, device="cpu", shape=(3, H, W), dtype=torch.float16)
    new_state, query = make("float16").declare_state_and_memory(state)
    assert new_state == state
    assert query == AllocationQuery((3, H, W), torch.float16, "cpu")


# ---------------------------------------------------------------------------
# CUDA


@pytest.mark.cuda
def test_cuda_matches_cpu(batches: dict[str, np.ndarray], labels: np.ndarray) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    for make in IMAGE_OPS.values():
        for kind in KINDS:
            for layout in LAYOUTS:
                cpu = run(make(kind), to_torch(batches[kind], layout), context())
                cuda = run(make(kind), to_torch(batches[kind], layout, "cuda"), context())
                assert cuda.is_cuda
                assert torch.equal(cuda.cpu(), cpu), (make(kind), kind, layout)
    cpu = run(T.LabelMixup(0.4, False), torch.from_numpy(labels), context())
    cuda = run(T.LabelMixup(0.4, False), torch.from_numpy(labels).cuda(), context())
    assert cuda.is_cuda
    assert torch.equal(cuda.cpu(), cpu)
