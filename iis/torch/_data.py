"""Images as normalised tensors for a model: :class:`ImageDataset` and :func:`data_config`."""

from __future__ import annotations

import os
from typing import Any, Hashable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ImageDataset", "data_config"]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def data_config(model: nn.Module | None = None) -> dict[str, Any]:
    """Input size and normalisation that ``model`` expects.

    Read from timm's ``model.pretrained_cfg`` (``mean``, ``std``, ``input_size``) when
    present, otherwise the torchvision ImageNet defaults (224 px, ImageNet mean/std).

    Parameters
    ----------
    model : torch.nn.Module, optional

    Returns
    -------
    dict
        ``{"size": int, "mean": tuple, "std": tuple}``.
    """
    cfg: dict[str, Any] = {"size": 224, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    pc = getattr(model, "pretrained_cfg", None) if model is not None else None
    if isinstance(pc, dict):
        if pc.get("mean") is not None:
            cfg["mean"] = tuple(float(v) for v in pc["mean"])
        if pc.get("std") is not None:
            cfg["std"] = tuple(float(v) for v in pc["std"])
        if pc.get("input_size") is not None:
            cfg["size"] = int(pc["input_size"][-1])
    return cfg


class ImageDataset(torch.utils.data.Dataset):
    """Raw images (uint8 0..255 or float 0..1, channels last) as normalised model inputs.

    Each item is resized (anti-aliased) to ``size x size``, scaled to [0, 1],
    replicated to 3 channels when grey, and normalised: ``(x - mean) / std``.

    Parameters
    ----------
    images : numpy.ndarray or sequence of numpy.ndarray or of paths
        ``(N, H, W, 3)``, ``(N, H, W)`` array, a list of ``(H, W[, 3])`` arrays (any
        sizes) or of image file paths (read with PIL as RGB). Memmaps and files are read
        lazily, one item at a time.
    labels : array-like, optional
        ``(N,)`` labels; items are then ``(image, label)`` pairs.
    size : int, optional
        Output side; None keeps each image's size.
    mean, std : sequence of 3 floats
        Normalisation (default ImageNet); see :func:`data_config`.
    interpolation : {"bilinear", "bicubic", "nearest"}, default "bilinear"
    """

    def __init__(
        self,
        images: Any,
        labels: Sequence[Hashable] | np.ndarray | None = None,
        *,
        size: int | None = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        interpolation: str = "bilinear",
    ) -> None:
        if isinstance(images, torch.Tensor):
            raise TypeError(
                "ImageDataset takes raw NumPy images (channels last); a tensor of already "
                "prepared images can be passed to extract_features directly"
            )
        if isinstance(images, np.ndarray):
            if images.ndim not in (3, 4):
                raise ValueError(f"images must have shape (N, H, W) or (N, H, W, C), got {images.shape}")
            if images.ndim == 4 and images.shape[-1] not in (1, 3, 4):
                raise ValueError(
                    f"images must be channels-last (N, H, W, 3), got shape {images.shape}"
                )
        elif not isinstance(images, (list, tuple)):
            raise TypeError(f"images must be a NumPy array or a list of arrays, got {type(images).__name__}")
        if len(images) == 0:
            raise ValueError("images is empty")
        self.images = images
        self.labels = None
        if labels is not None:
            lab = np.asarray(labels)
            if lab.ndim != 1 or lab.shape[0] != len(images):
                raise ValueError(f"labels must be 1-D with {len(images)} entries, got shape {lab.shape}")
            self.labels = lab
        if size is not None and (isinstance(size, bool) or int(size) < 1):
            raise ValueError(f"size must be a positive int or None, got {size!r}")
        self.size = None if size is None else int(size)
        m = np.asarray(mean, dtype=np.float64).reshape(-1)
        s = np.asarray(std, dtype=np.float64).reshape(-1)
        if m.shape != (3,) or s.shape != (3,):
            raise ValueError(f"mean and std must have 3 values each, got {m.shape[0]} and {s.shape[0]}")
        if np.any(s <= 0):
            raise ValueError(f"std must be positive, got {tuple(s)}")
        self.mean = torch.tensor(m, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(s, dtype=torch.float32).view(3, 1, 1)
        if interpolation not in ("bilinear", "bicubic", "nearest"):
            raise ValueError(f"interpolation must be 'bilinear', 'bicubic' or 'nearest', got {interpolation!r}")
        self.interpolation = interpolation

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        return f"ImageDataset(n={len(self)}, size={self.size}, labels={'yes' if self.labels is not None else 'no'})"

    def _convert(self, img: Any, index: int) -> torch.Tensor:
        if isinstance(img, (str, os.PathLike)):
            from PIL import Image

            with Image.open(img) as im:
                img = np.array(im.convert("RGB"))
        a = np.asarray(img)
        if a.ndim == 2:
            a = a[..., None]
        if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
            raise ValueError(f"image {index} must be (H, W) or (H, W, 3), got shape {a.shape}")
        a = a[..., :3]
        if a.dtype == np.uint8:
            x = torch.from_numpy(np.ascontiguousarray(a)).float().div_(255.0)
        elif np.issubdtype(a.dtype, np.floating):
            x = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
            if float(x.min()) < 0.0 or float(x.max()) > 1.0:
                raise ValueError(f"float image {index} must have values in [0, 1]")
        else:
            raise TypeError(f"image {index} has dtype {a.dtype}; use uint8 (0..255) or float (0..1)")
        x = x.permute(2, 0, 1)
        if x.shape[0] == 1:
            x = x.expand(3, -1, -1)
        if self.size is not None and tuple(x.shape[1:]) != (self.size, self.size):
            kw: dict[str, Any] = {"mode": self.interpolation}
            if self.interpolation != "nearest":
                kw.update(align_corners=False, antialias=True)
            x = F.interpolate(x[None], size=(self.size, self.size), **kw)[0]
            if self.interpolation == "bicubic":
                x = x.clamp_(0.0, 1.0)
        return ((x - self.mean) / self.std).contiguous()

    def __getitem__(self, index: int):
        x = self._convert(self.images[index], index)
        if self.labels is None:
            return x
        y = self.labels[index]
        return x, (int(y) if np.issubdtype(np.asarray(y).dtype, np.integer) else y)
