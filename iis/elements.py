"""Visual elements of images: SLIC segments and grid patches (docs/method.md section 6).

The Prototype and Cluster concept libraries are built from embeddings of *visual
elements* of training images. This module cuts the elements out of images; embedding
them with a PyTorch model is :func:`iis.torch.embed_elements` (``iis[torch]``; this
module never imports torch).

Segments follow the published extractor (``extractor/segment_extractor.py`` of the
paper's code, itself after ACE, Ghorbani et al. 2019):

1. SLIC superpixels of every image for each ``n_segments`` in ``(10, 20, 30)``, with
   ``compactness=10`` and ``sigma=1``;
2. within each setting, segments are visited in label order and a segment is kept when
   it covers more than ``min_area = 0.1 %`` of the image (area filter) and its Jaccard
   index with every segment already kept for this image is at most ``max_jaccard = 0.5``
   (overlap filter, which removes near-duplicates across settings); at most
   ``max_per_setting = 5`` segments are kept per setting;
3. each kept segment is placed on a background of grey ``fill = 117`` (outside the
   segment), cropped to the segment's bounding box and resized (bicubic) to the output
   size (the source image's size by default).

**Decisions** where the published code is broken: it loops ``for s in range(segments.max())``
although SLIC labels start at 1, so label 0 (absent) is tried and the last segment never
is; here every label is visited. Its crop ``patch[h1:h2, w1:w2]`` drops the last row and
column of the box (and fails for a one-pixel-high segment); here the box is inclusive.
Images with one channel are replicated to RGB instead of being skipped. The images of each
class are a seeded random choice (``per_class``), not the first files of a directory.

Patches follow ``extractor/patch_extractor.py``: a ``grid x grid`` tiling with tiles of
``floor(W / grid) x floor(H / grid)`` pixels (the remainder on the right/bottom is
dropped), each resized (bicubic) to the output size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Hashable, Iterable, Sequence

import numpy as np

from .datasets import select_per_class

if TYPE_CHECKING:  # pragma: no cover
    import matplotlib.axes

__all__ = ["Elements", "segments", "patches", "as_image_list"]


# --------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------
def _to_uint8_rgb(img: Any, index: int) -> np.ndarray:
    """One image as a C-contiguous (H, W, 3) uint8 array."""
    if type(img).__module__.startswith("torch"):
        raise TypeError(
            "images must be NumPy arrays in channels-last (H, W, 3) layout with values in "
            "0..255 (uint8) or 0..1 (float); got a torch tensor. Elements are cut from raw "
            "images, before any normalisation: pass e.g. tensor.permute(0, 2, 3, 1).numpy() "
            "of the un-normalised images."
        )
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[-1] not in (1, 3, 4) and a.shape[0] in (1, 3, 4):
        raise ValueError(
            f"image {index} has shape {a.shape}, which looks channels-first; images must be "
            "channels-last (H, W, 3)"
        )
    if a.ndim == 3 and a.shape[-1] == 4:
        a = a[..., :3]
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"image {index} must have shape (H, W), (H, W, 3) or (H, W, 4); got {a.shape}")
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"image {index} is empty (shape {a.shape})")
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if a.dtype == np.bool_:
        return np.ascontiguousarray(a.astype(np.uint8) * 255)
    if np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"image {index} contains NaN or infinite values")
        lo, hi = float(a.min()), float(a.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"float image {index} has values in [{lo:.3g}, {hi:.3g}]; float images must be "
                "in [0, 1] (un-normalised); pass uint8 images for 0..255"
            )
        return np.ascontiguousarray(np.rint(a * 255.0).astype(np.uint8))
    if np.issubdtype(a.dtype, np.integer):
        if a.min() < 0 or a.max() > 255:
            raise ValueError(f"integer image {index} has values outside 0..255")
        return np.ascontiguousarray(a.astype(np.uint8))
    raise TypeError(f"image {index} has unsupported dtype {a.dtype}")


def as_image_list(images: Any) -> list[np.ndarray]:
    """Images as a list of (H, W, 3) uint8 arrays.

    Parameters
    ----------
    images : numpy.ndarray or sequence of numpy.ndarray
        ``(N, H, W, 3)``, ``(N, H, W)`` or ``(N, H, W, 4)`` array (uint8 0..255 or float
        0..1), or a sequence of such single images (sizes may differ).

    Returns
    -------
    list of numpy.ndarray
    """
    if isinstance(images, np.ndarray):
        if images.ndim not in (3, 4):
            raise ValueError(
                f"images must be an array of shape (N, H, W) or (N, H, W, C), got shape {images.shape}"
            )
        seq: Iterable[Any] = (images[i] for i in range(images.shape[0]))
    elif type(images).__module__.startswith("torch"):
        _to_uint8_rgb(images, 0)  # raises the explanatory TypeError
        raise AssertionError("unreachable")
    elif isinstance(images, (list, tuple)):
        seq = images
    else:
        raise TypeError(f"images must be a NumPy array or a list of arrays, got {type(images).__name__}")
    out = [_to_uint8_rgb(img, i) for i, img in enumerate(seq)]
    if not out:
        raise ValueError("images is empty")
    return out


def _output_size(size: int | Sequence[int] | None, imgs: list[np.ndarray]) -> tuple[int, int]:
    """(height, width) of the output elements."""
    if size is None:
        shapes = {im.shape[:2] for im in imgs}
        if len(shapes) != 1:
            raise ValueError(
                "the images have different sizes; pass size= (an int or (height, width)) "
                "for the elements"
            )
        h, w = shapes.pop()
        return int(h), int(w)
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        return int(size), int(size)
    try:
        h, w = (int(s) for s in size)  # type: ignore[union-attr]
    except Exception as exc:  # noqa: BLE001
        raise TypeError(f"size must be None, an int or (height, width), got {size!r}") from exc
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return h, w


def _prepare(
    images: Any,
    labels: Sequence[Hashable] | np.ndarray | None,
    per_class: int | None,
    seed: int,
) -> tuple[list[np.ndarray], np.ndarray | None, np.ndarray]:
    imgs = as_image_list(images)
    lab = None
    if labels is not None:
        lab = np.asarray(labels)
        if lab.ndim != 1 or lab.shape[0] != len(imgs):
            raise ValueError(f"labels must be 1-D with {len(imgs)} entries (one per image), got shape {lab.shape}")
    if per_class is not None:
        if lab is None:
            raise ValueError("per_class needs labels")
        chosen = select_per_class(lab, per_class, seed=seed)
    else:
        chosen = np.arange(len(imgs), dtype=np.int64)
    return imgs, lab, chosen


def _resize(crop: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Bicubic resize of an (h, w, 3) uint8 crop to (H, W) with Pillow, as published."""
    from PIL import Image

    if crop.shape[:2] == hw:
        return crop
    pil = Image.fromarray(crop)
    return np.asarray(pil.resize((hw[1], hw[0]), Image.BICUBIC), dtype=np.uint8)


# --------------------------------------------------------------------------------------
# Result container
# --------------------------------------------------------------------------------------
@dataclass(repr=False, eq=False)
class Elements:
    """Visual elements cut from images, with where each came from.

    Attributes
    ----------
    images : numpy.ndarray
        ``(n, H, W, 3)`` uint8 element images.
    labels : numpy.ndarray or None
        ``(n,)`` label of the source image of each element (None when no labels were given).
    source : numpy.ndarray
        ``(n,)`` int64 index of the source image in the input.
    kind : str
        ``"segments"`` or ``"patches"``.
    setting : numpy.ndarray
        ``(n,)`` SLIC ``n_segments`` that produced each segment, or the grid for patches.
    boxes : numpy.ndarray
        ``(n, 4)`` int64 ``(top, left, bottom, right)`` in source-image pixels, bottom and
        right exclusive.
    area : numpy.ndarray
        ``(n,)`` fraction of the source image covered by the element.
    masks : list of numpy.ndarray or None
        Boolean source-image masks of the segments (``return_masks=True`` only).
    params : dict
        The parameters the elements were made with.
    """

    images: np.ndarray
    labels: np.ndarray | None
    source: np.ndarray
    kind: str
    setting: np.ndarray
    boxes: np.ndarray
    area: np.ndarray
    masks: list[np.ndarray] | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        n_src = int(np.unique(self.source).size) if len(self) else 0
        shape = "x".join(str(s) for s in self.images.shape[1:3])
        n_cls = "" if self.labels is None else f", classes={np.unique(self.labels).size}"
        return f"Elements(kind={self.kind!r}, n={len(self)}, size={shape}, source_images={n_src}{n_cls})"

    def subset(self, index: Any) -> "Elements":
        """Elements at ``index`` (anything NumPy accepts: ints, a slice, a boolean mask)."""
        idx = np.arange(len(self))[index]
        idx = np.atleast_1d(idx)
        return Elements(
            images=self.images[idx],
            labels=None if self.labels is None else self.labels[idx],
            source=self.source[idx],
            kind=self.kind,
            setting=self.setting[idx],
            boxes=self.boxes[idx],
            area=self.area[idx],
            masks=None if self.masks is None else [self.masks[i] for i in idx],
            params=dict(self.params),
        )

    def sample(self, n: int, *, seed: int = 0) -> "Elements":
        """``n`` elements chosen at random with ``seed``, stratified across labels.

        The same choice as :meth:`iis.ConceptLibrary.prototype` makes with this seed
        (classes visited round-robin, random within a class); uniform without labels; all
        elements when ``n >= len(self)``.
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        if n >= len(self):
            return self.subset(slice(None))
        if self.labels is None:
            pick = np.sort(np.random.default_rng(seed).permutation(len(self))[:n])
        else:
            from ._validation import stratified_choice

            pick = stratified_choice(np.asarray(self.labels), int(n), int(seed))
        return self.subset(pick)

    def show(self, n: int = 32, *, ncols: int = 8, seed: int = 0, ax: "matplotlib.axes.Axes | None" = None):
        """Montage of up to ``n`` elements (chosen with ``seed``) on one matplotlib axes."""
        import matplotlib.pyplot as plt

        if len(self) == 0:
            raise ValueError("there are no elements to show")
        pick = np.sort(np.random.default_rng(seed).permutation(len(self))[: min(n, len(self))])
        h, w = self.images.shape[1:3]
        nrows = int(np.ceil(pick.size / ncols))
        canvas = np.full((nrows * (h + 2), ncols * (w + 2), 3), 255, dtype=np.uint8)
        for k, i in enumerate(pick):
            r, c = divmod(k, ncols)
            canvas[r * (h + 2) : r * (h + 2) + h, c * (w + 2) : c * (w + 2) + w] = self.images[i]
        if ax is None:
            _, ax = plt.subplots(figsize=(ncols * 1.1, nrows * 1.1))
        ax.imshow(canvas)
        ax.set_axis_off()
        ax.set_title(f"{pick.size} of {len(self)} {self.kind}")
        return ax


# --------------------------------------------------------------------------------------
# SLIC segments
# --------------------------------------------------------------------------------------
def _check_fraction(value: float, name: str, *, low: float = 0.0, high: float = 1.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    v = float(value)
    if not (low <= v <= high):
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
    return v


def segments(
    images: Any,
    labels: Sequence[Hashable] | np.ndarray | None = None,
    *,
    n_segments: Sequence[int] = (10, 20, 30),
    compactness: float = 10.0,
    sigma: float = 1.0,
    max_per_setting: int | None = 5,
    min_area: float = 0.001,
    max_jaccard: float = 0.5,
    fill: int = 117,
    size: int | Sequence[int] | None = None,
    per_class: int | None = None,
    seed: int = 0,
    return_masks: bool = False,
    progress: bool = False,
) -> Elements:
    """SLIC segments of images, filtered and cropped as in the published extractor.

    Parameters
    ----------
    images : numpy.ndarray or sequence of numpy.ndarray
        ``(N, H, W, 3)`` (or ``(N, H, W)``) uint8 0..255 or float 0..1 images, channels
        last, *before* model normalisation; or a list of such images of any sizes.
    labels : array-like, optional
        ``(N,)`` class of each image; needed for ``per_class`` and for stratified
        prototype sampling later.
    n_segments : sequence of int, default (10, 20, 30)
        SLIC settings; segments of later settings must not duplicate earlier ones.
    compactness, sigma : float, default 10 and 1
        SLIC parameters (published values).
    max_per_setting : int or None, default 5
        At most this many segments kept per image and setting (None: no cap).
    min_area : float, default 0.001
        Area filter: a segment must cover *more* than this fraction of the image.
    max_jaccard : float, default 0.5
        Overlap filter: a segment whose Jaccard index with a segment already kept for the
        same image *exceeds* this is dropped.
    fill : int, default 117
        Grey level (0..255) of the background around a segment.
    size : int or (int, int) or None
        Output size; None keeps the source images' size (they must all be equal).
    per_class : int, optional
        Use only this many images per class, chosen with ``seed`` (published: 10).
    seed : int, default 0
    return_masks : bool, default False
        Keep the boolean source-image mask of every segment in ``Elements.masks``.
    progress : bool, default False
        Show a progress bar (tqdm) over the images.

    Returns
    -------
    Elements

    Examples
    --------
    >>> from iis.datasets import load_digits_images
    >>> imgs, y = load_digits_images(size=32)
    >>> el = segments(imgs, y, per_class=2)
    >>> el.images.shape[1:]
    (32, 32, 3)
    """
    from skimage.segmentation import slic

    settings = [int(s) for s in n_segments]
    if not settings or any(s < 1 for s in settings):
        raise ValueError(f"n_segments must be a non-empty sequence of positive ints, got {n_segments!r}")
    if max_per_setting is not None and (isinstance(max_per_setting, bool) or int(max_per_setting) < 1):
        raise ValueError(f"max_per_setting must be a positive int or None, got {max_per_setting!r}")
    min_area = _check_fraction(min_area, "min_area")
    max_jaccard = _check_fraction(max_jaccard, "max_jaccard")
    if isinstance(fill, bool) or not isinstance(fill, (int, np.integer)) or not 0 <= fill <= 255:
        raise ValueError(f"fill must be an int in 0..255, got {fill!r}")
    if float(compactness) <= 0 or float(sigma) < 0:
        raise ValueError(f"compactness must be > 0 and sigma >= 0, got {compactness}, {sigma}")
    imgs, lab, chosen = _prepare(images, labels, per_class, seed)
    out_hw = _output_size(size, [imgs[i] for i in chosen])

    out_images: list[np.ndarray] = []
    out_source: list[int] = []
    out_setting: list[int] = []
    out_boxes: list[tuple[int, int, int, int]] = []
    out_area: list[float] = []
    out_masks: list[np.ndarray] = []
    iterator: Iterable[int] = chosen
    if progress:
        try:
            from tqdm import tqdm

            iterator = tqdm(chosen, desc="segments", unit="img")
        except ImportError:  # pragma: no cover - tqdm comes with timm/torch installs
            pass
    for i in iterator:
        img = imgs[int(i)]
        n_pix = img.shape[0] * img.shape[1]
        kept: list[np.ndarray] = []
        for n_seg in settings:
            seg = slic(img, n_segments=n_seg, compactness=float(compactness), sigma=float(sigma),
                       start_label=1, channel_axis=-1)
            n_kept_here = 0
            for s in np.unique(seg):
                mask = seg == s
                area = float(mask.sum()) / n_pix
                if not area > min_area:
                    continue
                duplicate = False
                for seen in kept:
                    inter = np.count_nonzero(seen & mask)
                    if inter == 0:
                        continue
                    union = np.count_nonzero(seen | mask)
                    if inter / union > max_jaccard:
                        duplicate = True
                        break
                if duplicate:
                    continue
                kept.append(mask)
                rows = np.flatnonzero(mask.any(axis=1))
                cols = np.flatnonzero(mask.any(axis=0))
                top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
                crop = np.where(mask[top:bottom, left:right, None], img[top:bottom, left:right],
                                np.uint8(fill)).astype(np.uint8)
                out_images.append(_resize(np.ascontiguousarray(crop), out_hw))
                out_source.append(int(i))
                out_setting.append(n_seg)
                out_boxes.append((top, left, bottom, right))
                out_area.append(area)
                if return_masks:
                    out_masks.append(mask)
                n_kept_here += 1
                if max_per_setting is not None and n_kept_here >= int(max_per_setting):
                    break
    return _finish(
        "segments", out_images, out_source, out_setting, out_boxes, out_area, lab, out_hw,
        masks=out_masks if return_masks else None,
        params=dict(n_segments=tuple(settings), compactness=float(compactness), sigma=float(sigma),
                    max_per_setting=max_per_setting, min_area=min_area, max_jaccard=max_jaccard,
                    fill=int(fill), size=out_hw, per_class=per_class, seed=seed),
    )


def _finish(
    kind: str,
    out_images: list[np.ndarray],
    out_source: list[int],
    out_setting: list[int],
    out_boxes: list[tuple[int, int, int, int]],
    out_area: list[float],
    lab: np.ndarray | None,
    out_hw: tuple[int, int],
    *,
    masks: list[np.ndarray] | None,
    params: dict[str, Any],
) -> Elements:
    src = np.asarray(out_source, dtype=np.int64)
    images = (np.stack(out_images) if out_images else np.zeros((0, *out_hw, 3), dtype=np.uint8))
    return Elements(
        images=np.ascontiguousarray(images),
        labels=None if lab is None else lab[src],
        source=src,
        kind=kind,
        setting=np.asarray(out_setting, dtype=np.int64),
        boxes=np.asarray(out_boxes, dtype=np.int64).reshape(-1, 4),
        area=np.asarray(out_area, dtype=np.float64),
        masks=masks,
        params=params,
    )


# --------------------------------------------------------------------------------------
# Grid patches
# --------------------------------------------------------------------------------------
def patches(
    images: Any,
    labels: Sequence[Hashable] | np.ndarray | None = None,
    *,
    grid: int = 4,
    size: int | Sequence[int] | None = None,
    per_class: int | None = None,
    seed: int = 0,
) -> Elements:
    """``grid x grid`` patches of every image, as in the published patch extractor.

    Parameters
    ----------
    images : numpy.ndarray or sequence of numpy.ndarray
        As for :func:`segments`.
    labels : array-like, optional
        ``(N,)`` class of each image.
    grid : int, default 4
        Patches per side; tiles are ``floor(H / grid) x floor(W / grid)`` pixels.
    size : int or (int, int) or None
        Output size (published: 224); None keeps the source images' size.
    per_class : int, optional
        Use only this many images per class, chosen with ``seed`` (published: 10).
    seed : int, default 0

    Returns
    -------
    Elements
    """
    if isinstance(grid, bool) or not isinstance(grid, (int, np.integer)) or grid < 1:
        raise ValueError(f"grid must be a positive int, got {grid!r}")
    imgs, lab, chosen = _prepare(images, labels, per_class, seed)
    out_hw = _output_size(size, [imgs[i] for i in chosen])
    out_images, out_source, out_boxes, out_area = [], [], [], []
    for i in chosen:
        img = imgs[int(i)]
        h, w = img.shape[:2]
        th, tw = h // grid, w // grid
        if th < 1 or tw < 1:
            raise ValueError(f"image {int(i)} of size {h}x{w} is smaller than the {grid}x{grid} grid")
        for r in range(grid):
            for c in range(grid):
                box = (r * th, c * tw, (r + 1) * th, (c + 1) * tw)
                crop = np.ascontiguousarray(img[box[0] : box[2], box[1] : box[3]])
                out_images.append(_resize(crop, out_hw))
                out_source.append(int(i))
                out_boxes.append(box)
                out_area.append(th * tw / (h * w))
    return _finish(
        "patches", out_images, out_source, [int(grid)] * len(out_images), out_boxes, out_area, lab, out_hw,
        masks=None, params=dict(grid=int(grid), size=out_hw, per_class=per_class, seed=seed),
    )
