"""Real images that ship with installed packages, and seeded stratified splits.

Everything here works offline: the images come from scikit-learn (``load_digits``:
1797 real 8x8 handwritten digits scanned at NIST, 10 classes) and scikit-image
(``skimage.data``: real photographs). Nothing in this module imports torch.

Examples
--------
>>> from iis.datasets import load_digits_images, train_eval_split
>>> images, labels = load_digits_images(size=32)
>>> images.shape, images.dtype
((1797, 32, 32, 3), dtype('uint8'))
>>> train_idx, eval_idx = train_eval_split(labels, eval_fraction=0.25, seed=0)
"""

from __future__ import annotations

from typing import Hashable, Sequence

import numpy as np

__all__ = [
    "load_digits_images",
    "load_photos",
    "train_eval_split",
    "select_per_class",
    "PHOTO_NAMES",
]

#: RGB photographs shipped inside scikit-image (no download needed).
PHOTO_NAMES: tuple[str, ...] = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "colorwheel",
    "stereo_motorcycle",
)


def _check_positive_int(value: object, name: str, minimum: int = 1) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def load_digits_images(
    size: int = 32,
    *,
    rgb: bool = True,
    n_per_class: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Load scikit-learn's real handwritten digits as upsampled uint8 images.

    The 8x8 scans (grey levels 0..16, ink bright on a dark background) are scaled to
    0..255 and resized with bilinear interpolation to ``size x size``; with ``rgb`` the
    grey channel is replicated three times so that ImageNet models accept them.

    Parameters
    ----------
    size : int, default 32
        Side of the returned square images (>= 8).
    rgb : bool, default True
        Return ``(N, size, size, 3)`` images; otherwise ``(N, size, size)``.
    n_per_class : int or None, default None
        When given, keep only this many images of each digit, chosen with ``seed``
        (stratified; all images of a class if it has fewer).
    seed : int, default 0
        Seed of the per-class choice.

    Returns
    -------
    images : numpy.ndarray of uint8
        ``(N, size, size, 3)`` (or ``(N, size, size)``), C-contiguous.
    labels : numpy.ndarray of int64
        ``(N,)`` digit classes 0..9.
    """
    from skimage.transform import resize
    from sklearn.datasets import load_digits

    size = _check_positive_int(size, "size", minimum=8)
    bunch = load_digits()
    raw = np.asarray(bunch.images, dtype=np.float64) / 16.0  # (N, 8, 8) in [0, 1]
    labels = np.asarray(bunch.target, dtype=np.int64)
    if n_per_class is not None:
        keep = select_per_class(labels, n_per_class, seed=seed)
        raw, labels = raw[keep], labels[keep]
    if size != 8:
        # One call on the stacked array: resize the last two axes only.
        up = resize(raw, (raw.shape[0], size, size), order=1, mode="edge",
                    anti_aliasing=False, preserve_range=True)
    else:
        up = raw
    images = np.clip(np.rint(up * 255.0), 0, 255).astype(np.uint8)
    if rgb:
        images = np.repeat(images[..., None], 3, axis=-1)
    return np.ascontiguousarray(images), labels


def load_photos(names: Sequence[str] | None = None, size: int | None = None) -> dict[str, np.ndarray]:
    """Real RGB photographs that ship with scikit-image.

    Parameters
    ----------
    names : sequence of str or None
        Which photos (default: all of :data:`PHOTO_NAMES`).
    size : int or None
        When given, every photo is resized (bilinear, anti-aliased) to ``size x size``.

    Returns
    -------
    dict of str to numpy.ndarray
        ``name -> (H, W, 3)`` uint8 image.
    """
    import skimage.data
    from skimage.transform import resize

    names = PHOTO_NAMES if names is None else tuple(names)
    out: dict[str, np.ndarray] = {}
    for name in names:
        if name not in PHOTO_NAMES:
            raise ValueError(f"unknown photo {name!r}; choose from {', '.join(PHOTO_NAMES)}")
        img = getattr(skimage.data, name)()
        if isinstance(img, tuple):  # stereo_motorcycle returns (left, right, disparity)
            img = img[0]
        img = np.asarray(img)[..., :3]
        if size is not None:
            s = _check_positive_int(size, "size")
            img = resize(img, (s, s), order=1, anti_aliasing=True, preserve_range=True)
            img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        out[name] = np.ascontiguousarray(img, dtype=np.uint8)
    return out


def _encode_labels(labels: Sequence[Hashable] | np.ndarray, name: str = "labels") -> np.ndarray:
    """Codes 0..K-1 of class labels, checked as iis.score checks them."""
    from ._validation import _labels_1d

    return np.unique(_labels_1d(labels, name), return_inverse=True)[1].reshape(-1)


def select_per_class(
    labels: Sequence[Hashable] | np.ndarray, n_per_class: int, *, seed: int = 0
) -> np.ndarray:
    """Indices of ``n_per_class`` items of every class, chosen at random with ``seed``.

    Classes with fewer items contribute all of them. The result is sorted, so the
    original order of the data is kept.

    Parameters
    ----------
    labels : array-like of class labels, shape (N,)
    n_per_class : int
    seed : int, default 0

    Returns
    -------
    numpy.ndarray of int64
        Sorted indices into ``labels``.
    """
    n_per_class = _check_positive_int(n_per_class, "n_per_class")
    codes = _encode_labels(labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(int(codes.max()) + 1):
        idx = np.flatnonzero(codes == c)
        if idx.size > n_per_class:
            idx = rng.choice(idx, size=n_per_class, replace=False)
        chosen.append(idx)
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def train_eval_split(
    labels: Sequence[Hashable] | np.ndarray,
    eval_fraction: float = 0.3,
    *,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split stratified by class.

    In every class ``round(eval_fraction * n_c)`` items go to the evaluation split,
    at least one to each side when the class has two or more items.

    Parameters
    ----------
    labels : array-like of class labels, shape (N,)
    eval_fraction : float, default 0.3
        Strictly between 0 and 1.
    seed : int, default 0

    Returns
    -------
    train_idx, eval_idx : numpy.ndarray of int64
        Sorted, disjoint indices whose union is ``range(N)``.
    """
    if not (isinstance(eval_fraction, (float, int)) and 0.0 < float(eval_fraction) < 1.0):
        raise ValueError(f"eval_fraction must be strictly between 0 and 1, got {eval_fraction!r}")
    codes = _encode_labels(labels)
    rng = np.random.default_rng(seed)
    train, evals = [], []
    for c in range(int(codes.max()) + 1):
        idx = rng.permutation(np.flatnonzero(codes == c))
        n_eval = int(round(float(eval_fraction) * idx.size))
        if idx.size >= 2:
            n_eval = min(max(n_eval, 1), idx.size - 1)
        evals.append(idx[:n_eval])
        train.append(idx[n_eval:])
    return (np.sort(np.concatenate(train)).astype(np.int64),
            np.sort(np.concatenate(evals)).astype(np.int64))
