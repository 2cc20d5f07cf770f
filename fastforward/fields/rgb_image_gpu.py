"""Opt-in GPU JPEG decoding (nvJPEG, through ``torchvision.io.decode_jpeg``).

For machines with few CPU cores per GPU. The crops are the CPU decoders'
crops: the same sampler, fed the same per-sample random numbers (the
decoder's stream depends only on the pipeline's name), so a pipeline gives
the same windows of the same images whichever path decodes. Pixels differ
slightly: the resize runs on the GPU (torch's antialiased bilinear filter)
and nvJPEG's IDCT is not libjpeg-turbo's.

Output: ``(B, h, w, 3)`` uint8 on the GPU, like the CPU decoders' layout, so
``ToTorchImage()`` and GPU transforms follow directly (no ``ToTensor`` or
``ToDevice``). torchvision is an optional dependency, imported on first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import DecodeError
from ..pipeline import geometry
from ..pipeline.allocation_query import AllocationQuery
from ..pipeline.operation import BatchContext, Operation
from ..pipeline.state import State
from ..utils import TORCHVISION_HINT, size_pair
from .rgb_image import IMAGE_MODES, CenterCropRGBImageDecoder, RandomResizedCropRGBImageDecoder


class _NvJpegMixin:
    """Replaces the CPU decode loop of a crop decoder with a batched GPU one."""

    parallel = False  # one batched call per batch, on the loader's CUDA stream
    device: Any
    fname: str
    field_name: str

    def fuse(self, transforms: Sequence[Operation], rng_streams: Sequence[int],
             previous_state: State | None = None) -> list[int]:
        """The flip only: it writes uint8 on the GPU; conversions run after it, there."""
        flip = transforms[:1] if transforms and type(transforms[0]).__name__ == (
            "RandomHorizontalFlip") else []
        return super().fuse(flip, rng_streams[:1])  # type: ignore[misc]

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery]:
        import torch

        try:
            import torchvision.io  # noqa: F401
        except ImportError as exc:
            raise ImportError(f"{type(self).__name__} needs torchvision (nvJPEG): "
                              f"{TORCHVISION_HINT}") from exc
        if not torch.cuda.is_available():
            raise RuntimeError(f"{type(self).__name__}: CUDA is not available")
        height, width = size_pair(self.output_size)  # type: ignore[attr-defined]
        shape = (height, width, 3)
        device = torch.device(self.device)
        return (State(jit_mode=False, device=device, shape=shape, dtype=torch.uint8,
                      channels_first=False),
                AllocationQuery(shape, torch.uint8, device))

    def decode_range(self, lo: int, hi: int, destination: Any, context: BatchContext) -> None:
        import torch
        from torch.nn.functional import interpolate

        rows = self.metadata[context.indices[lo:hi]]  # type: ignore[attr-defined]
        source, offsets, sizes = context.data.field(self.field_index)  # type: ignore[attr-defined]
        source = memoryview(source)
        device = torch.device(self.device)
        payloads = [torch.frombuffer(bytearray(source[int(o) : int(o) + int(s)]), dtype=torch.uint8)
                    for o, s in zip(offsets[lo:hi], sizes[lo:hi], strict=True)]
        jpegs = [k for k, mode in enumerate(rows["mode"].tolist()) if mode == IMAGE_MODES["jpg"]]
        decoded = dict(zip(jpegs, self._nvjpeg([payloads[k] for k in jpegs],
                                               [context.indices[lo + k] for k in jpegs],
                                               device), strict=True)) if jpegs else {}
        u = self.uniforms(context)  # type: ignore[attr-defined]
        flip = self.flips(context, lo, hi)  # type: ignore[attr-defined]
        height, width = destination.shape[1:3]
        crops_array = self.crops(rows["height"].astype(np.int64),  # type: ignore[attr-defined]
                                 rows["width"].astype(np.int64),
                                 None if u is None else u[lo:hi])
        if context.geometry_out is not None:  # masks or boxes follow this image
            geometry.fill(context.geometry_out[lo:hi], rows["height"], rows["width"],
                          crops_array, height, width, flip)
        crops = crops_array.tolist()
        for k, position in enumerate(range(lo, hi)):
            h_img, w_img = int(rows["height"][k]), int(rows["width"][k])
            if k in decoded:
                image = decoded[k]  # (3, H, W)
            else:  # raw pixels
                image = payloads[k][: h_img * w_img * 3].view(h_img, w_img, 3).to(
                    device, non_blocking=True).permute(2, 0, 1)
            i, j, h, w = crops[k]
            window = image[None, :, i : i + h, j : j + w].float()
            resized = interpolate(window, size=(height, width), mode="bilinear",
                                  antialias=True, align_corners=False)[0]
            if flip[k]:
                resized = resized.flip(-1)
            destination[position].copy_(resized.round_().clamp_(0, 255).permute(1, 2, 0))


    def _nvjpeg(self, payloads: list[Any], samples: list[int], device: Any) -> list[Any]:
        """nvJPEG's images of *payloads*, after the stream's earlier work.

        nvJPEG's hardware decoder writes its outputs without waiting for the
        work already queued on the stream it is given, and those outputs come
        from torch's caching allocator, which hands out memory as soon as it is
        freed on that stream: an earlier batch's kernels still reading it would
        see this batch's pixels (pytorch/vision#9606). The stream is drained
        first. A JPEG that does not decode is named (file, sample, field): the
        batched call says only that one of them failed; where each decodes on its
        own, those images are the batch's. Running out of GPU memory is raised as
        torch raises it.
        """
        import torch
        import torchvision.io

        rgb = torchvision.io.ImageReadMode.RGB  # (a grayscale JPEG has 1 channel as it is)
        torch.cuda.current_stream(device).synchronize()
        try:
            return list(torchvision.io.decode_jpeg(payloads, mode=rgb, device=device))
        except torch.OutOfMemoryError:
            raise  # not the JPEGs' fault: as torch raises it, for code that shrinks batches
        except RuntimeError:
            pass
        images = []
        for payload, sample in zip(payloads, samples, strict=True):
            try:
                images.append(torchvision.io.decode_jpeg(payload, mode=rgb, device=device))
            except torch.OutOfMemoryError:
                raise
            except RuntimeError as exc:
                raise DecodeError(f"{self.fname}: sample {int(sample)}, field "
                                  f"{self.field_name!r}: nvJPEG cannot decode its JPEG: "
                                  f"{exc}") from None
        return images  # one by one, every JPEG decodes: the batched call's failure passes


class NvJpegRandomResizedCropRGBImageDecoder(_NvJpegMixin, RandomResizedCropRGBImageDecoder):
    """``RandomResizedCropRGBImageDecoder`` decoding on the GPU with nvJPEG."""

    def __init__(self, output_size: tuple[int, int], scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), device: Any = "cuda") -> None:
        super().__init__(output_size, scale, ratio)
        self.device = device


class NvJpegCenterCropRGBImageDecoder(_NvJpegMixin, CenterCropRGBImageDecoder):
    """``CenterCropRGBImageDecoder`` decoding on the GPU with nvJPEG."""

    def __init__(self, output_size: tuple[int, int], ratio: float, device: Any = "cuda") -> None:
        super().__init__(output_size, ratio)
        self.device = device


__all__ = ["NvJpegCenterCropRGBImageDecoder", "NvJpegRandomResizedCropRGBImageDecoder"]

