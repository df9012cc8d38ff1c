"""Concept libraries: named concept vectors in the representation space."""
from __future__ import annotations

import numbers
import os
import warnings
from typing import Any, List, Optional, Sequence

import numpy as np

from . import _core
from ._blas import kernels
from ._end2end import end2end_library
from ._text import text_library
from ._validation import (read_npz, single_blas, as_float_matrix, check_option, check_threads, encode_labels,
                          stratified_choice)

NORMALIZATIONS = ("layernorm", "standardize", "none")
_FORMAT = "iis.ConceptLibrary/1"
LAYERNORM_EPS = 1e-5  # docs/method.md section 2: (a - mean) / sqrt(var + 1e-5)


class ConceptLibrary:
    """A concept library ``P`` (M x d) with one name per concept.

    Parameters
    ----------
    vectors : array-like of shape (M, d)
        Concept vectors in the representation space. They need not be unit
        norm: activations use ``unit(P)`` (docs/method.md section 2). Zero rows are
        rejected.
    names : sequence of str, optional
        One name per concept (default ``concept_0 ...``).
    kind : str
        ``"prototype"``, ``"cluster"``, ``"end2end"``, ``"text"``, ``"infodisent"``
        or ``"custom"``; informational.
    default_normalize : {"layernorm", "standardize", "none"}
        Normalisation used by :func:`iis.score` when ``normalize=None``
        (``"standardize"`` for text libraries, as in Label-free CBM).
    """

    def __init__(self, vectors: Any, names: Optional[Sequence[str]] = None, kind: str = "custom",
                 default_normalize: str = "layernorm", meta: Optional[dict] = None) -> None:
        self.vectors = vectors  # validated, copied and made read-only by the setter
        if names is None:
            names = [f"concept_{i}" for i in range(self.n_concepts)]
        self.names = names
        self.kind = str(kind)
        self.default_normalize = check_option(default_normalize, "default_normalize", NORMALIZATIONS)
        self.meta = dict(meta or {})

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_array(cls, vectors: Any, names: Optional[Sequence[str]] = None,
                   default_normalize: str = "layernorm") -> "ConceptLibrary":
        """Wrap an existing (M, d) array of concept vectors."""
        return cls(vectors, names, kind="custom", default_normalize=default_normalize)

    @classmethod
    def prototype(cls, elements: Any, element_labels: Any, n_concepts: int = 200, seed: int = 0,
                  names: Optional[Sequence[str]] = None) -> "ConceptLibrary":
        """Prototype library: ``n_concepts`` element embeddings sampled stratified across classes.

        Parameters
        ----------
        elements : array-like (n_elements, d)
            Embeddings of visual elements (segments/patches of train images) by
            the same model and layer as the features.
        element_labels : array-like (n_elements,)
            Class of the image each element comes from.
        n_concepts : int
            Number of prototypes M (default 200).
        seed : int
            Seed of the stratified sampling (classes visited round-robin, elements
            drawn at random within a class). The published code takes the first
            M elements (about two classes); docs/method.md fixes that.
        """
        x = as_float_matrix(elements, "elements")
        _check_count(n_concepts, "n_concepts", x.shape[0])
        classes, y, _ = encode_labels(element_labels)
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"element_labels has {y.shape[0]} entries for {x.shape[0]} elements")
        pick = stratified_choice(y, int(n_concepts), seed)
        vec = x[pick]
        if np.any(np.abs(vec).max(axis=1) == 0):  # max |v|: a norm can underflow to 0
            keep = np.flatnonzero(np.abs(x).max(axis=1) > 0)
            if keep.size < n_concepts:
                raise ValueError("too few elements with non-zero norm for the prototypes")
            pick = keep[stratified_choice(y[keep], int(n_concepts), seed)]
            vec = x[pick]
        if names is None:
            names = [f"prototype_{i}[{classes[y[j]]}]" for i, j in enumerate(pick)]
        return cls(vec, names, kind="prototype",
                   meta={"element_index": pick.tolist(), "seed": int(seed)})

    @classmethod
    def cluster(cls, elements: Any, element_labels: Any = None, n_concepts: int = 200, seed: int = 0,
                max_elements: int = 20000, max_iter: int = 300, tol: float = 1e-4,
                n_threads: Optional[int] = None) -> "ConceptLibrary":
        """Cluster library: k-means (k-means++ init, seeded, Lloyd in C) centroids, unit norm.

        The arguments come in the order of :meth:`prototype`'s.

        Parameters
        ----------
        elements : array-like (n_elements, d)
            Embeddings of visual elements, as for :meth:`prototype`.
        element_labels : array-like (n_elements,), optional
            Class of the image each element comes from: up to ``max_elements``
            elements are used, sampled stratified across these classes when
            given (uniformly otherwise).
        n_concepts : int
            Number of centroids M (default 200).
        seed : int
            Seed of the sampling and of the k-means++ initialisation.
        max_elements, max_iter, tol, n_threads
            Elements used at most; Lloyd iterations at most, stopping when the
            centroids' total squared shift is at most ``tol`` times the mean
            feature variance (scikit-learn's rule); threads (None: all cores).

        Elements of any accepted magnitude (up to 1e30) are clustered alike: k-means
        runs on them scaled by a power of two; ``meta["inertia"]`` is in the
        elements' own units.
        """
        x = as_float_matrix(elements, "elements")
        if isinstance(element_labels, numbers.Number):  # the order before (elements, n_concepts, seed)
            raise TypeError(f"element_labels must be an array of labels, got {element_labels!r}; the "
                            "order is cluster(elements, element_labels=None, n_concepts=200, seed=0): "
                            "pass n_concepts by keyword")
        _check_count(n_concepts, "n_concepts", x.shape[0])
        _check_count(max_elements, "max_elements", None)
        if isinstance(max_iter, bool) or not isinstance(max_iter, numbers.Integral) or max_iter < 0:
            raise ValueError(f"max_iter must be an integer >= 0, got {max_iter!r}")
        if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not (0 <= tol < np.inf):
            raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
        y = None
        if element_labels is not None:
            _, y, _ = encode_labels(element_labels)
            if y.shape[0] != x.shape[0]:
                raise ValueError(f"element_labels has {y.shape[0]} entries for {x.shape[0]} elements")
        if x.shape[0] > max_elements:
            if y is not None:
                pick = stratified_choice(y, int(max_elements), seed)
            else:
                pick = np.sort(np.random.default_rng(seed).choice(x.shape[0], max_elements, replace=False))
            x = x[pick]
        x = np.ascontiguousarray(x)
        if n_concepts > x.shape[0]:
            raise ValueError(f"n_concepts={n_concepts} exceeds the {x.shape[0]} elements used")
        # k-means is scale-equivariant: cluster x / 2**e with max |x| / 2**e in [0.5, 1), exact
        # in binary floating point, so that float32 squared distances of large (about 1e19)
        # or small elements neither overflow nor underflow; the centroids are unit-normalised
        e = int(np.frexp(np.abs(x).max())[1])
        x = np.ldexp(x, -e).astype(x.dtype, copy=False)
        with single_blas():
            centers, labels, inertia, n_iter = _core.kmeans(
                x, int(n_concepts), seed=int(seed) & (2**64 - 1), max_iter=min(int(max_iter), 2**31 - 1),
                tol=float(tol), n_threads=check_threads(n_threads), kernels=kernels())
        inertia = float(inertia) * 4.0 ** e
        norms = np.linalg.norm(centers.astype(np.float64), axis=1, keepdims=True)
        if np.any(norms == 0):
            raise ValueError("a k-means centroid is the zero vector; the elements may be degenerate")
        centers = (centers / norms).astype(x.dtype)
        sizes = np.bincount(labels, minlength=int(n_concepts))
        if np.any(sizes == 0):
            warnings.warn(f"k-means left {int(np.sum(sizes == 0))} of {n_concepts} clusters empty: the elements "
                          "have fewer distinct points than n_concepts, so some concepts repeat; lower n_concepts "
                          "or use more varied elements", RuntimeWarning, stacklevel=2)
        return cls(centers, [f"cluster_{i}" for i in range(int(n_concepts))], kind="cluster",
                   meta={"inertia": inertia, "n_iter": int(n_iter), "seed": int(seed), "sizes": sizes.tolist()})

    @classmethod
    def text(cls, concepts: Sequence[str], train_features: Any, clip_image_features: Any,
             clip_text_features: Any, *, top5_cutoff: float = 0.25,
             interpretability_cutoff: float = 0.45, steps: int = 1000, seed: int = 0,
             holdout: float = 0.1, lr: float = 1e-3, eval_every: int = 50, patience: int = 1,
             n_threads: Optional[int] = None, progress: bool = False) -> "ConceptLibrary":
        """Text library by the Label-free CBM recipe (docs/method.md section 6).

        1. ``T = unit(clip_image_features) @ unit(clip_text_features).T`` (n x C).
        2. Concepts whose mean top-5 similarity over train is ``<= top5_cutoff`` are dropped.
        3. ``W_c`` (C x d, no bias) is learned in the C core by full-batch Adam
           (``lr``, torch's betas) maximising the mean over concepts of the cos^3
           similarity between the columns of ``train_features @ W_c.T`` and of
           ``T`` (columns centred, cubed, unit-normalised, then dotted), starting
           from ``U(-1/sqrt(d), 1/sqrt(d))`` (seeded). A seeded ``holdout``
           fraction of train is held out; it is evaluated before the first step
           and every ``eval_every`` steps, the best ``W_c`` is kept and learning
           stops after ``patience`` evaluations without improvement.
        4. Concepts whose held-out similarity is ``<= interpretability_cutoff``
           are dropped.

        Parameters
        ----------
        concepts : sequence of str
            Distinct concept strings (see :func:`iis.load_concepts`).
        train_features : array-like (n, d)
            Representation features of the train images (float32/float64).
        clip_image_features : array-like (n, e)
            CLIP image embeddings of the same images, in the same order.
        clip_text_features : array-like (C, e)
            CLIP text embeddings of ``concepts`` by the same CLIP model
            (:func:`iis.torch.clip_embeddings` computes both).
        top5_cutoff, interpretability_cutoff : float
            Cut-offs on the mean top-5 CLIP similarity and on the held-out cos^3
            similarity (LF-CBM: 0.25 and 0.45).
        steps : int
            Adam steps at most (LF-CBM: 1000).
        seed : int
            Seeds the held-out split and the initialisation; the same seed gives
            the same library.
        holdout : float in (0, 1)
            Fraction of train held out for early stopping (at least 2 rows).
        lr, eval_every, patience
            Adam learning rate, evaluation period and early-stopping patience.
        n_threads : int or None
            Threads for the C core and BLAS.
        progress : bool
            Print the step count to stderr.

        Returns
        -------
        ConceptLibrary
            ``kind="text"``, ``default_normalize="standardize"``; ``vectors`` are
            the learned rows of ``W_c`` kept, ``names`` their concept strings
            (input order); ``meta`` records the similarities, the dropped
            concepts, the train/held-out objective histories and the best step.

        Raises
        ------
        ValueError
            When shapes disagree, or no concept survives one of the cut-offs.
        """
        vectors, names, meta = text_library(
            concepts, train_features, clip_image_features, clip_text_features, top5_cutoff=top5_cutoff,
            interpretability_cutoff=interpretability_cutoff, steps=steps, seed=seed, holdout=holdout, lr=lr,
            eval_every=eval_every, patience=patience, n_threads=n_threads, progress=progress)
        return cls(vectors, names, kind="text", default_normalize="standardize", meta=meta)

    # ------------------------------------------------------------------ state
    @property
    def vectors(self) -> np.ndarray:
        """The concept vectors ``P`` (M, d): the library's own read-only copy."""
        return self._vectors

    @vectors.setter
    def vectors(self, value: Any) -> None:
        # any finite scale is fine: only the directions unit(P) are used
        v = np.array(as_float_matrix(value, "concept vectors", row_strided_ok=False, max_abs=None),
                     copy=True)
        zero = np.flatnonzero(np.abs(v).max(axis=1) == 0)
        if zero.size:
            raise ValueError(f"concept vectors have zero norm at rows {zero[:10].tolist()}; "
                             "a zero concept has no direction")
        names = self.__dict__.get("_names")
        if names is not None and len(names) != v.shape[0]:
            raise ValueError(f"got {v.shape[0]} concept vectors for the library's {len(names)} names; "
                             "build a new ConceptLibrary to change the number of concepts")
        v.setflags(write=False)
        # a view of a read-only owner: it cannot be made writable again, so the cached
        # unit(P) never goes stale; every assignment validates and drops the cache
        self._vectors = v.view()
        self._unit_cache: dict = {}

    @property
    def names(self) -> List[str]:
        """One name (str) per concept."""
        return self._names

    @names.setter
    def names(self, value: Any) -> None:
        if isinstance(value, (str, bytes)):  # would be split into characters
            raise TypeError("names must be a sequence of strings, one per concept, got a single string")
        try:
            names = [str(n) for n in value]
        except TypeError:
            raise TypeError(f"names must be a sequence of strings, got {type(value).__name__}") from None
        if len(names) != self.n_concepts:
            raise ValueError(f"got {len(names)} names for {self.n_concepts} concept vectors")
        self._names = names

    def __getstate__(self) -> dict:
        """Pickled state: the public attributes only (no cache)."""
        return {"vectors": np.array(self._vectors), "names": list(self._names), "kind": self.kind,
                "default_normalize": self.default_normalize, "meta": self.meta}

    def __setstate__(self, state: dict) -> None:
        """Unpickling (also ``copy.deepcopy``, ``sklearn.base.clone``) validates as ``__init__``."""
        if not isinstance(state, dict) or "vectors" not in state:
            raise TypeError("not a pickled ConceptLibrary state")
        self.__init__(state["vectors"], state.get("names", state.get("_names")), state.get("kind", "custom"),
                      state.get("default_normalize", "layernorm"), state.get("meta"))

    @classmethod
    def end2end(cls, elements: Any, train_features: Any, train_labels: Any, n_concepts: int = 200,
                temperature: float = 0.1, sparsity: float = 0.5, *, steps: int = 2000, lr: float = 0.05,
                l2: float = 1e-4, holdout: float = 0.1, eval_every: int = 50, patience: int = 10,
                seed: int = 0, element_names: Optional[Sequence[str]] = None,
                n_threads: Optional[int] = None, progress: bool = False) -> "ConceptLibrary":
        """End2End library: concepts learned jointly with a linear head (docs/method.md section 6).

        Element ``j`` is assigned to one of ``n_concepts`` concepts by learned logits
        ``q_j``: the arg-max of ``(LN(q_j) + g) / temperature`` with Gumbel noise ``g``
        in the forward pass, the gradient of its softmax in the backward pass
        (straight-through hard Gumbel-softmax, LN over the concepts without affine).
        Concept ``m`` is ``unit(sum of its elements)``. A linear head reads the
        activations ``F unit(P)^T``, layer-normalised per sample and masked to their
        ``k = M - floor(M * sparsity)`` largest magnitudes (as :func:`iis.score` does),
        and everything is trained by full-batch Adam on the mean cross-entropy plus
        ``l2/2 ||W||^2`` in the C core (float64). A seeded ``holdout`` fraction of
        train is held out: the accuracy of the deterministic model (arg-max
        assignment, no noise; ties broken by its cross-entropy) is evaluated before
        the first step and every ``eval_every`` steps; the best state is kept, and
        training stops after
        ``patience`` evaluations without improvement or after ``steps`` steps.
        The library is the final arg-max assignment; the head is discarded
        (:func:`iis.score` fits its own predictor on the library).

        Parameters
        ----------
        elements : array-like (n_elements, d)
            Embeddings of visual elements (``iis.elements.patches(...).embed(...)``)
            by the same model and layer as the features; at least ``n_concepts``.
        train_features : array-like (n, d)
            Features of the train images (never the evaluation split).
        train_labels : array-like (n,)
            Their labels (at least two classes).
        n_concepts : int, default 200
            M. Concepts left without elements are dropped (``meta["n_empty"]``).
        temperature : float, default 0.1
            Gumbel-softmax temperature (the published class uses 0.1).
        sparsity : float in [0, 1), default 0.5
            The mask's ratio s while training.
        steps, lr, l2, holdout, eval_every, patience
            Adam steps at most, learning rate, L2 penalty of the head, held-out
            fraction, evaluation period and patience of the early stopping.
        seed : int
            Seeds the split, the initialisation (``q ~ N(0, 1)``, ``W`` as
            ``nn.Linear``) and the noise; same seed, same library, whatever ``n_threads``.
        element_names : sequence of str, optional
            Used in the concept names instead of element indices.
        n_threads : int or None
            Threads of the C core.
        progress : bool
            Print the step count to stderr.

        Returns
        -------
        ConceptLibrary
            ``kind="end2end"``; names ``"end2end_<m>: elements i, j, ..."``;
            ``meta`` holds the assignment, the concept sizes, the train and
            held-out losses and the best step.

        Raises
        ------
        ValueError
            Wrong shapes, NaN/Inf, a single class, ``n_concepts`` above the
            number of elements, or parameters out of range.
        """
        vectors, names, meta = end2end_library(
            elements, train_features, train_labels, n_concepts=n_concepts, temperature=temperature,
            sparsity=sparsity, steps=steps, lr=lr, l2=l2, holdout=holdout, eval_every=eval_every,
            patience=patience, seed=seed, element_names=element_names, n_threads=n_threads, progress=progress)
        return cls(vectors, names, kind="end2end", meta=meta)

    @classmethod
    def from_infodisent(cls, model: Any) -> "ConceptLibrary":
        """The columns of a fitted :class:`iis.InfoDisent`'s rotation U as a concept library.

        ``z = F U``: channel c of InfoDisent is the projection on column c of U, a unit
        vector in the space of the map's channels, which is also the space of the pooled
        features (the CNN's global average of that map), so :func:`iis.score` scores it.
        Names are ``infodisent_<c>``.
        """
        if not hasattr(model, "rotation_"):
            raise TypeError("from_infodisent needs a fitted iis.InfoDisent (call fit first)")
        u = np.asarray(model.rotation_)
        return cls(u.T, [f"infodisent_{c}" for c in range(u.shape[1])], kind="infodisent",
                   meta={"parametrization": model.parametrization})

    # --------------------------------------------------------------------- misc
    @property
    def n_concepts(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return self.n_concepts

    def __repr__(self) -> str:
        return (f"ConceptLibrary(kind={self.kind!r}, n_concepts={self.n_concepts}, dim={self.dim}, "
                f"default_normalize={self.default_normalize!r})")

    def unit(self, dtype: Any = None) -> np.ndarray:
        """Unit-norm concept vectors ``unit(P)`` as a C-contiguous array (a new one)."""
        return self._unit(dtype).copy()

    def _unit(self, dtype: Any = None) -> np.ndarray:
        """``unit(P)``, read-only, computed once per dtype (1.2 ms for 200 x 768, about
        2% of projecting 50,000 features); the vectors cannot change under the cache."""
        dt = np.dtype(dtype or self._vectors.dtype)
        u = self._unit_cache.get(dt)
        if u is None:
            u = self._compute_unit(dt)
            u.setflags(write=False)
            self._unit_cache[dt] = u
        return u

    def _compute_unit(self, dtype: np.dtype) -> np.ndarray:
        v = self.vectors.astype(np.float64)
        with np.errstate(over="ignore", under="ignore"):
            nrm = np.linalg.norm(v, axis=1, keepdims=True)
        if not (np.all(np.isfinite(nrm)) and np.all(nrm > 1e-150)):
            # the norm of a 1e200 (1e-200) row overflows (underflows): scale by max |v| first
            v = v / np.abs(v).max(axis=1, keepdims=True)
            nrm = np.linalg.norm(v, axis=1, keepdims=True)
        return np.ascontiguousarray(v / nrm, dtype=dtype)

    def subset(self, index: Any) -> "ConceptLibrary":
        """A library with the concepts at ``index`` (in that order)."""
        idx = np.asarray(index).reshape(-1)
        if idx.dtype == bool:
            if idx.size != self.n_concepts:
                raise ValueError(f"a boolean index needs {self.n_concepts} entries, got {idx.size}")
            idx = np.flatnonzero(idx)
        return ConceptLibrary(self.vectors[idx], [self.names[i] for i in idx], kind=self.kind,
                              default_normalize=self.default_normalize, meta=self.meta)

    def save(self, path: "str | os.PathLike") -> None:
        """Save to ``.npz`` (vectors, names, kind, default_normalize); no pickles.

        ``path`` is a file name (``.npz`` is appended when missing, as NumPy does)
        or a binary file object."""
        np.savez(path, vectors=self.vectors, names=np.asarray(self.names, dtype=str),
                 kind=np.asarray(self.kind), default_normalize=np.asarray(self.default_normalize),
                 format=np.asarray(_FORMAT))

    @classmethod
    def load(cls, path: "str | os.PathLike") -> "ConceptLibrary":
        """Load a library written by :meth:`save` (a path, ``"x"`` for ``x.npz``, or a binary
        file object). Only the library's members are read; no code is run. Raises
        ValueError naming the member when the file is inconsistent."""
        z = read_npz(path, "concept library", ("vectors", "names", "kind", "default_normalize", "format"))
        where = f"concept library file {getattr(path, 'name', '<file object>') if hasattr(path, 'read') else path!r}"
        if "vectors" not in z:
            raise ValueError(f"{where}: not an iis concept library (no 'vectors' array)")
        return library_from_arrays(z, where, "")


def _text_scalar(z: dict, key: str, where: str, default: str) -> str:
    """A 0-d string member (kind, normalisation names, format)."""
    if key not in z:
        return default
    v = z[key]
    if v.shape != () or v.dtype.kind != "U":
        raise ValueError(f"{where}: member {key!r} must be a text scalar, got {v.dtype} of shape {v.shape}")
    return str(v)


def library_from_arrays(z: dict, where: str, prefix: str) -> ConceptLibrary:
    """A library from its saved members (``prefix`` + vectors, names, kind, default_normalize),
    each checked, errors naming the member."""
    fmt = _text_scalar(z, prefix + "format", where, _FORMAT) if not prefix else _FORMAT
    if fmt != _FORMAT:
        raise ValueError(f"{where}: member 'format' is {fmt!r}, expected {_FORMAT!r}")
    names = z.get(prefix + "names")
    if names is not None:
        if names.ndim != 1 or names.dtype.kind != "U":
            raise ValueError(f"{where}: member {prefix + 'names'!r} must be a 1-D array of strings, got "
                             f"{names.dtype} of shape {names.shape}")
        names = names.tolist()
    kind = _text_scalar(z, prefix + "kind", where, "custom")
    norm = _text_scalar(z, prefix + "default_normalize", where, "layernorm")
    try:
        return ConceptLibrary(z[prefix + "vectors"], names, kind=kind, default_normalize=norm)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{where}: {exc} (members {prefix + 'vectors'!r}, {prefix + 'names'!r}, "
                         f"{prefix + 'default_normalize'!r})") from None


def _check_count(value: Any, name: str, upper: Optional[int]) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    if upper is not None and value > upper:
        raise ValueError(f"{name}={value} exceeds the {upper} elements available")


def warn_if_layernorm_at_chance(f: np.ndarray, unit_p: np.ndarray, name: str) -> None:
    """Warn when layernorm activations carry (almost) nothing, whatever the labels.

    * Every concept points the same way (or M = 1): each sample's M activations are
      equal and layernorm maps them to 0.
    * The activations' per-sample variance is far below LayerNorm's epsilon (features
      scaled down, e.g. by 1e-6): ``(a - mean) / sqrt(var + eps)`` shrinks them towards 0.

    Checked on at most 256 rows spread over ``f`` (a small GEMM). A warning, not an
    error: the score is well defined (chance level) and the same library is meaningful
    with ``normalize="standardize"`` or ``"none"``.
    """
    unit_p = np.asarray(unit_p)
    if unit_p.shape[0] == 1 or np.abs(unit_p - unit_p[0]).max() <= 1e-6:
        warnings.warn(f"the concept library's {unit_p.shape[0]} concept(s) all point the same way: "
                      "after layernorm every activation is 0 and the score is at chance level; use "
                      "distinct concepts, or normalize='standardize' or 'none'", RuntimeWarning, stacklevel=3)
        return
    rows = np.asarray(f)[::max(1, f.shape[0] // 256)][:256]
    with np.errstate(all="ignore"):
        a = rows.astype(np.float64) @ unit_p.T.astype(np.float64)
        var = a.var(axis=1)
    live = np.abs(a).max(axis=1) > 0
    typical = np.median(var[live]) if live.any() else np.nan
    if typical < LAYERNORM_EPS * 1e-3:  # also False for NaN: the projection reports bad rows
        warnings.warn(f"{name}: the concept activations' per-sample variance (median {typical:.3g}) is far "
                      f"below LayerNorm's epsilon {LAYERNORM_EPS:g}, so layernorm shrinks them towards 0 and "
                      "the score drops to chance level; rescale the features (e.g. to unit norm per "
                      "sample) or use normalize='standardize'", RuntimeWarning, stacklevel=3)
