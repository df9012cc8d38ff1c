"""Fine-tuning with interpretability maximisation (docs/method.md section 8, paper Eq. 8).

The objective is

    L = CE(h(f(x)), y) + weight * CE(g(mask_s(norm(f(x) @ unit(P).T))), y)

where ``f`` is the backbone (pre-logit features), ``h`` the model's own classifier,
``P`` a frozen library of M concept vectors (prototypes taken from the pre-trained
backbone), ``mask_s`` the sparsity mask of ``iis.score`` (docs/method.md section 3: the
``k(s)`` activations of largest magnitude in each sample, ties to the lower concept
index, kept as they are or soft-thresholded), and ``g`` a linear classifier over the M
concepts, trained jointly. The mask is a constant in the backward pass: which entries
are kept (and the soft threshold) is chosen under ``no_grad``, so the gradient reaches
the kept activations (and through them ``f`` and the backbone) but never flows through
the selection itself.
"""

from __future__ import annotations

import numbers
import warnings
from typing import Any, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import _core
from .._api import ConvergenceWarning, convergence_message
from .._library import ConceptLibrary
from .._solver import fit_logreg
from .._validation import as_float_matrix, check_option, check_positive
from ..elements import patches, segments
from ._features import embed_elements, find_classifier

__all__ = ["ConceptHead", "InterpretabilityLoss", "LossParts", "FeatureModel", "build_prototypes",
           "fit_linear", "keep_count"]

_KIND_SINGULAR = {"patches": "patch", "segments": "segment"}
_POOL_FACTOR = 4  # elements embedded per prototype kept (before the zero-norm filter)


# --------------------------------------------------------------------------------------
# Sparsity mask
# --------------------------------------------------------------------------------------
def _check_sparsity(sparsity: Any) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise TypeError(f"sparsity must be a real number in [0, 1), got {sparsity!r}")
    if not (0.0 <= float(sparsity) < 1.0):
        raise ValueError(f"sparsity must lie in [0, 1), got {sparsity!r}")
    return float(sparsity)


def keep_count(n_concepts: int, sparsity: float, keep: str = "default") -> int:
    """Concepts kept per sample at sparsity ``s`` (docs/method.md section 3), as ``iis.score``.

    Parameters
    ----------
    n_concepts : int
        M >= 1.
    sparsity : float
        s in [0, 1).
    keep : {"default", "published"}, default "default"
        ``default``: ``k(s) = M - floor(M*s)``; ``published``: one fewer (the published
        code), never below 0.

    Returns
    -------
    int
    """
    if isinstance(n_concepts, bool) or not isinstance(n_concepts, numbers.Integral) or n_concepts < 1:
        raise ValueError(f"n_concepts must be an integer >= 1, got {n_concepts!r}")
    check_option(keep, "keep", ("default", "published"))
    return int(_core.keep_count(int(n_concepts), _check_sparsity(sparsity), keep == "published"))


def _sparsify(a: torch.Tensor, k: int, soft: bool) -> torch.Tensor:
    """mask_s of each row of ``a``: the ``k`` entries of largest |a| (ties to the lower
    index) kept (hard) or moved towards 0 by the (k+1)-th largest |a| (soft), the rest
    zero; ``k >= M`` keeps the row. Selection and threshold carry no gradient."""
    if k >= a.shape[1]:
        return a
    with torch.no_grad():
        # a stable descending sort keeps equal magnitudes in index order: the lower index wins
        mag, order = torch.sort(a.abs(), dim=1, descending=True, stable=True)
        kept = torch.zeros_like(a).scatter_(1, order[:, :k], 1.0)
        shift = a.sign() * mag[:, k:k + 1] if soft else torch.zeros((), dtype=a.dtype, device=a.device)
    return (a - shift) * kept


# --------------------------------------------------------------------------------------
# The concept head g(mask_s(norm(f @ unit(P).T)))
# --------------------------------------------------------------------------------------
def _prototype_matrix(prototypes: Any) -> torch.Tensor:
    """(M, d) float64 CPU tensor from an array, a tensor or a ConceptLibrary; validated."""
    source = getattr(prototypes, "vectors", prototypes)
    if isinstance(source, torch.Tensor):
        source = source.detach().cpu()
    mat = torch.from_numpy(as_float_matrix(source, "prototypes", dtype=np.float64, allow_empty=True).copy())
    if mat.shape[0] < 1 or mat.shape[1] < 1:
        raise ValueError(f"prototypes must have at least one concept and one dimension, got shape {tuple(mat.shape)}")
    zero = torch.nonzero(mat.norm(dim=1) == 0).flatten()
    if zero.numel():
        raise ValueError(f"prototypes has zero-norm concept vectors at rows {zero[:10].tolist()}")
    return mat / mat.norm(dim=1, keepdim=True)


class ConceptHead(nn.Module):
    """Interpretation-based classifier ``g(mask_s(norm(f @ unit(P).T)))``.

    Parameters
    ----------
    prototypes : array-like, torch.Tensor or iis.ConceptLibrary
        (M, d) concept vectors. They are normalised to unit length and stored as a
        frozen buffer (``concepts``): they move with ``.to()``, are saved in the
        ``state_dict`` and receive no gradient.
    n_classes : int
        Number of classes K of the linear classifier ``g`` (``nn.Linear(M, K)``).
    sparsity : float, default 0.1
        s in [0, 1).
    normalize : {"layernorm", "none"}, default "layernorm"
        ``layernorm``: per sample across the M concepts, ``(a - mean) / sqrt(var + 1e-5)``
        with the biased variance and no affine parameters (as ``iis.score``).
    mask : {"hard", "soft"}, default "hard"
        As ``iis.score``: keep the ``k`` activations of largest magnitude unchanged
        (hard) or soft-threshold them at the (k+1)-th largest magnitude (soft).
    keep : {"default", "published"}, default "default"
        As ``iis.score``: ``k = M - floor(M*s)`` or one fewer (:func:`keep_count`); where
        that is 0, every activation is masked and ``g`` is the bias-only model, as in
        ``iis.score``.

    Attributes
    ----------
    concepts : torch.Tensor
        (M, d) unit concept vectors (buffer, float32).
    classifier : torch.nn.Linear
        ``g``.
    names : list of str or None
        Concept names when ``prototypes`` is a ConceptLibrary.

    Notes
    -----
    The projection and the normalisation run in float32 (float64 for a float64 head),
    also inside ``torch.autocast``; ``g`` itself follows the autocast policy.

    Examples
    --------
    >>> import torch
    >>> head = ConceptHead(torch.randn(200, 64), n_classes=10, sparsity=0.1)
    >>> head(torch.randn(8, 64)).shape
    torch.Size([8, 10])
    """

    concepts: torch.Tensor

    def __init__(self, prototypes: Any, n_classes: int, sparsity: float = 0.1, *,
                 normalize: str = "layernorm", mask: str = "hard", keep: str = "default") -> None:
        super().__init__()
        unit = _prototype_matrix(prototypes)
        if isinstance(n_classes, bool) or not isinstance(n_classes, numbers.Integral):
            raise TypeError(f"n_classes must be an integer, got {n_classes!r}")
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes}")
        self.normalize = check_option(normalize, "normalize", ("layernorm", "none"))
        self.mask = check_option(mask, "mask", ("hard", "soft"))
        self.keep = check_option(keep, "keep", ("default", "published"))
        self.n_classes = int(n_classes)
        self.register_buffer("concepts", unit.to(torch.float32))
        self.sparsity = sparsity
        self.classifier = nn.Linear(unit.shape[0], self.n_classes)
        self.names = [str(n) for n in prototypes.names] if hasattr(prototypes, "vectors") else None

    @property
    def n_concepts(self) -> int:
        """M, the number of concepts."""
        return int(self.concepts.shape[0])

    @property
    def in_features(self) -> int:
        """d, the feature dimension expected by :meth:`forward`."""
        return int(self.concepts.shape[1])

    @property
    def sparsity(self) -> float:
        """The sparsity ratio s."""
        return self._sparsity

    @sparsity.setter
    def sparsity(self, value: float) -> None:
        self._sparsity = _check_sparsity(value)

    @property
    def k(self) -> int:
        """Concepts kept per sample (:func:`keep_count`)."""
        return keep_count(self.n_concepts, self._sparsity, self.keep)

    def extra_repr(self) -> str:
        return (f"n_concepts={self.n_concepts}, in_features={self.in_features}, n_classes={self.n_classes}, "
                f"sparsity={self._sparsity}, k={self.k}, normalize={self.normalize!r}, mask={self.mask!r}")

    @torch.no_grad()
    def set_prototypes(self, prototypes: Any) -> None:
        """Replace the frozen concept vectors (e.g. refreshed from the current backbone).

        Parameters
        ----------
        prototypes : array-like, torch.Tensor or iis.ConceptLibrary
            (M, d) with the same M and d as before (``g`` keeps its weights).
        """
        unit = _prototype_matrix(prototypes)
        if unit.shape != self.concepts.shape:
            raise ValueError(f"new prototypes have shape {tuple(unit.shape)} but the head was built with "
                             f"{tuple(self.concepts.shape)} (M, d)")
        self.concepts.copy_(unit)

    def activations(self, features: torch.Tensor) -> torch.Tensor:
        """Normalised concept activations ``norm(f @ unit(P).T)``, (N, M)."""
        if not isinstance(features, torch.Tensor) or not features.is_floating_point():
            raise TypeError(f"features must be a floating-point torch.Tensor, got "
                            f"{getattr(features, 'dtype', type(features).__name__)}")
        if features.ndim != 2 or features.shape[1] != self.in_features:
            raise ValueError(f"features must be 2-D (batch, d={self.in_features}), got shape "
                             f"{tuple(features.shape)}")
        dt = torch.promote_types(torch.promote_types(torch.float32, features.dtype), self.concepts.dtype)
        with torch.autocast(device_type=features.device.type, enabled=False):
            a = features.to(dt) @ self.concepts.to(dt).t()
            return F.layer_norm(a, (a.shape[1],), eps=1e-5) if self.normalize == "layernorm" else a

    def concept_activations(self, features: torch.Tensor) -> torch.Tensor:
        """Masked activations ``mask_s(norm(f @ unit(P).T))`` (the input of ``g``)."""
        return _sparsify(self.activations(features), self.k, self.mask == "soft")

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits of the interpretation-based prediction ``g(...)``, shape (N, K)."""
        z = self.concept_activations(features)
        if not torch.is_autocast_enabled(features.device.type):
            z = z.to(self.classifier.weight.dtype)
        return self.classifier(z)

    def fit(self, features: Any, labels: Any, *, l2: float = 1e-3, tol: float = 1e-5, max_iter: int = 1000,
            n_threads: Optional[int] = None) -> "ConceptHead":
        """Fit ``g`` alone on held (frozen) features: a warm start before fine-tuning.

        The interpretable predictor of ``iis.score`` on these concepts (:func:`fit_linear`
        on ``mask_s(norm(f @ unit(P).T))``); the prototypes are unchanged.

        Parameters
        ----------
        features : torch.Tensor or numpy.ndarray
            (N, d) features, e.g. from :func:`iis.torch.extract_features`.
        labels : array-like
            (N,) class indices in [0, n_classes).
        l2, tol, max_iter, n_threads
            See :func:`fit_linear`.

        Returns
        -------
        ConceptHead
            ``self``.
        """
        f = features if isinstance(features, torch.Tensor) else torch.from_numpy(np.asarray(features))
        with torch.no_grad():
            z = self.concept_activations(f.to(self.concepts.device))
        fit_linear(self.classifier, z, labels, l2=l2, tol=tol, max_iter=max_iter, n_threads=n_threads)
        return self


def fit_linear(linear: nn.Linear, inputs: Any, labels: Any, *, l2: float = 1e-3, tol: float = 1e-5,
               max_iter: int = 1000, n_threads: Optional[int] = None) -> nn.Linear:
    """Fit an ``nn.Linear`` as a multinomial logistic regression, in place.

    Minimises ``mean CE(linear(x), y) + l2/2 * ||W||^2`` (bias not penalised) from zero
    weights with the C solver of ``iis.score`` until max|grad| <= ``tol``; a
    :class:`iis.ConvergenceWarning` says when ``max_iter`` came first. Used to
    warm-start the model's classifier ``h`` and the concept classifier ``g`` on frozen
    pre-trained features, so that the accuracies "before fine-tuning" are those of the
    pre-trained representation.

    Parameters
    ----------
    linear : torch.nn.Linear
        (in_features -> n_classes, with a bias); overwritten.
    inputs : torch.Tensor or numpy.ndarray
        (N, in_features).
    labels : array-like
        (N,) integer classes in [0, out_features).
    l2 : float, default 1e-3
    tol : float, default 1e-5
    max_iter : int, default 1000
    n_threads : int, optional
        Threads of the solver (None: all cores), as ``iis.score``.

    Returns
    -------
    torch.nn.Linear
        ``linear``.
    """
    if not isinstance(linear, nn.Linear) or linear.bias is None:
        raise TypeError(f"linear must be a torch.nn.Linear with a bias, got {linear!r}")
    check_positive(l2, "l2", strict=False)
    check_positive(tol, "tol")
    check_positive(max_iter, "max_iter", integer=True)
    w = linear.weight
    x = np.ascontiguousarray(as_float_matrix(inputs, "inputs", dtype=np.float64 if w.dtype == torch.float64
                                             else np.float32))
    y = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels)
    K = linear.out_features
    if x.shape[1] != linear.in_features:
        raise ValueError(f"inputs has shape {x.shape} but the layer takes {linear.in_features} features")
    if y.shape != (x.shape[0],) or y.dtype.kind not in "iu":
        raise ValueError(f"labels must be {x.shape[0]} integer class indices, got {y.dtype} of shape {y.shape}")
    if y.min() < 0 or y.max() >= K:
        raise ValueError(f"labels must lie in [0, {K}), got [{y.min()}, {y.max()}]")
    wk, b, _, conv, reason = fit_logreg(x, y.astype(np.int32), K, l2, tol, min(max_iter, 2**31 - 1), n_threads)
    if not conv:
        warnings.warn(convergence_message("fit_linear", reason, tol, max_iter), ConvergenceWarning, stacklevel=2)
    with torch.no_grad():
        w.copy_(torch.from_numpy(wk.T))
        linear.bias.copy_(torch.from_numpy(b))
    return linear


# --------------------------------------------------------------------------------------
# The loss
# --------------------------------------------------------------------------------------
class LossParts(NamedTuple):
    """Terms of :class:`InterpretabilityLoss` (returned with ``return_parts=True``)."""

    loss: torch.Tensor
    ce_h: torch.Tensor
    ce_g: torch.Tensor
    logits_g: torch.Tensor


class InterpretabilityLoss(nn.Module):
    """``CE(h(f), y) + weight * CE(g(mask_s(norm(f @ unit(P).T))), y)`` (paper Eq. 8).

    Parameters
    ----------
    head : ConceptHead
        The interpretation-based classifier ``g`` with its frozen concepts. Its
        parameters must be given to the optimiser together with the model's.
    weight : float, default 1.0
        lambda >= 0, the weight of the interpretability term.
    detach_features : bool, default False
        If True, the second term sees ``f.detach()``: ``g`` still learns but the
        backbone receives the gradient of the first term only (the "without the second
        term" baseline that still reports an accuracy of ``g``).
    label_smoothing : float, default 0.0
        Passed to both cross-entropies.

    Examples
    --------
    >>> head = ConceptHead(prototypes, n_classes)           # doctest: +SKIP
    >>> criterion = InterpretabilityLoss(head, weight=1.0)  # doctest: +SKIP
    >>> features, logits = FeatureModel(model)(x)           # doctest: +SKIP
    >>> loss = criterion(features, logits, y)               # doctest: +SKIP
    """

    def __init__(self, head: ConceptHead, weight: float = 1.0, *, detach_features: bool = False,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not isinstance(head, ConceptHead):
            raise TypeError(f"head must be an iis.torch.ConceptHead, got {type(head).__name__}")
        check_positive(weight, "weight", strict=False)
        if not (0.0 <= float(label_smoothing) < 1.0):
            raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing!r}")
        self.head = head
        self.weight = float(weight)
        self.detach_features = bool(detach_features)
        self.label_smoothing = float(label_smoothing)

    def extra_repr(self) -> str:
        return f"weight={self.weight}, detach_features={self.detach_features}"

    def forward(self, features: torch.Tensor, logits: torch.Tensor, target: torch.Tensor,
                return_parts: bool = False) -> Union[torch.Tensor, LossParts]:
        """Compute the loss.

        Parameters
        ----------
        features : torch.Tensor
            (B, d) pre-logit features ``f(x)`` (with their graph to the backbone).
        logits : torch.Tensor
            (B, K) output of the model's classifier ``h(f(x))``.
        target : torch.Tensor
            (B,) integer class indices in [0, K).
        return_parts : bool, default False
            Return a :class:`LossParts` (loss, ce_h, ce_g, logits_g) instead of the
            scalar loss.

        Returns
        -------
        torch.Tensor or LossParts
            The scalar loss (float32).
        """
        if not isinstance(target, torch.Tensor) or target.ndim != 1:
            raise ValueError("target must be a 1-D tensor of class indices")
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")
        if not all(isinstance(t, torch.Tensor) and t.ndim == 2 for t in (logits, features)):
            raise ValueError("logits and features must be 2-D tensors (batch, classes) and (batch, d)")
        b = target.shape[0]
        if features.shape[0] != b or logits.shape[0] != b:
            raise ValueError(f"batch sizes disagree: features {features.shape[0]}, logits {logits.shape[0]}, "
                             f"target {b}")
        if logits.shape[1] != self.head.n_classes:
            raise ValueError(f"logits have {logits.shape[1]} classes but the concept head has "
                             f"n_classes={self.head.n_classes}")
        target = target.long()
        ce_h = F.cross_entropy(logits.float(), target, label_smoothing=self.label_smoothing)
        logits_g = self.head(features.detach() if self.detach_features else features)
        ce_g = F.cross_entropy(logits_g.float(), target, label_smoothing=self.label_smoothing)
        loss = ce_h + self.weight * ce_g
        return LossParts(loss, ce_h.detach(), ce_g.detach(), logits_g) if return_parts else loss


# --------------------------------------------------------------------------------------
# Model wrapper returning (features, logits)
# --------------------------------------------------------------------------------------
class FeatureModel(nn.Module):
    """Wrap a classification model so that it returns ``(features, logits)``.

    The features are the input of the final classifier (timm ``get_classifier()``, else
    :func:`iis.torch.find_classifier`), captured by a forward pre-hook in the same
    forward pass as the logits, so gradients flow from both back into the backbone.

    Parameters
    ----------
    model : torch.nn.Module
        The classification model ``h(f(x))``.
    classifier : torch.nn.Module, optional
        The final classifier module inside ``model``; found automatically if omitted.

    Examples
    --------
    >>> fm = FeatureModel(timm.create_model("resnet18", num_classes=10))  # doctest: +SKIP
    >>> features, logits = fm(images)                                     # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, classifier: Optional[nn.Module] = None) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        if classifier is None:
            get = getattr(model, "get_classifier", None)  # timm
            classifier = get() if callable(get) and callable(getattr(model, "forward_head", None)) else None
            if not isinstance(classifier, nn.Module) or isinstance(classifier, nn.Identity):
                classifier = find_classifier(model)
        if not any(m is classifier for m in model.modules()):
            raise ValueError("classifier must be a submodule of model")
        self._classifier_ref = [classifier]  # not registered twice as a submodule
        self._captured: Optional[torch.Tensor] = None
        classifier.register_forward_pre_hook(self._capture)

    @property
    def classifier(self) -> nn.Module:
        """The classifier ``h`` whose input is captured."""
        return self._classifier_ref[0]

    def _capture(self, module: nn.Module, args: tuple) -> None:
        self._captured = torch.flatten(args[0], 1) if args[0].ndim > 2 else args[0]

    def forward(self, x: torch.Tensor) -> tuple:
        self._captured = None
        logits = self.model(x)
        feats, self._captured = self._captured, None
        if feats is None:
            raise RuntimeError("the classifier was not called during the forward pass")
        return feats, logits


# --------------------------------------------------------------------------------------
# Prototypes from a pre-trained backbone
# --------------------------------------------------------------------------------------
def build_prototypes(model: nn.Module, images: Any, labels: Any, n_concepts: int = 200, *,
                     elements: str = "patches", per_class: Optional[int] = 10, grid: int = 4,
                     n_segments: Sequence[int] = (10, 20, 30), size: Optional[int] = None,
                     mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                     seed: int = 0, batch_size: int = 64, device: Any = None,
                     progress: bool = False) -> ConceptLibrary:
    """Prototype concept library: embeddings of visual elements of training images.

    The elements (grid patches or SLIC segments, :mod:`iis.elements`) of ``per_class``
    seeded images of every class are cut out, ``n_concepts`` of them are chosen
    stratified across classes with ``seed`` (docs/method.md section 6), and they are embedded
    by ``model`` at the layer of the features (the input of its final classifier).
    Only a stratified pool of ``4 * n_concepts`` elements is embedded; elements whose
    embedding is zero are dropped before the final stratified choice
    (``iis.ConceptLibrary.prototype``). ``model``'s train/eval mode is restored.

    Parameters
    ----------
    model : torch.nn.Module
        The backbone with its classifier (pre-trained, or the current one for a refresh).
    images : numpy.ndarray or list of numpy.ndarray
        Raw training images, channels last, uint8 0..255 or float 0..1 (before the
        model's normalisation).
    labels : array-like
        (N,) class of each image.
    n_concepts : int, default 200
        M (fewer when fewer elements exist).
    elements : {"patches", "segments"}, default "patches"
    per_class : int or None, default 10
        Images per class whose elements are cut (the published extractor uses 10).
    grid : int, default 4
        Patches per side (``elements="patches"``).
    n_segments : sequence of int, default (10, 20, 30)
        SLIC settings (``elements="segments"``).
    size, mean, std, batch_size, device, progress
        As :func:`iis.torch.embed_elements`.
    seed : int, default 0

    Returns
    -------
    iis.ConceptLibrary
        ``kind="prototype"``; names say class, element kind, source image and box.
    """
    if isinstance(n_concepts, bool) or not isinstance(n_concepts, numbers.Integral) or n_concepts < 1:
        raise ValueError(f"n_concepts must be a positive integer, got {n_concepts!r}")
    check_option(elements, "elements", ("patches", "segments"))
    if elements == "patches":
        el = patches(images, labels, grid=grid, per_class=per_class, seed=seed)
    else:
        el = segments(images, labels, n_segments=n_segments, per_class=per_class, seed=seed, progress=progress)
    if len(el) == 0:
        raise ValueError("no visual elements could be cut from the images")
    # Embed a stratified pool (a few times M, not every element), drop elements whose
    # embedding is zero (e.g. blank patches under ReLU features), then sample M
    # stratified across classes with the core's sampler.
    pool = el.sample(min(len(el), _POOL_FACTOR * int(n_concepts)), seed=seed)
    emb = embed_elements(pool, model, size=size, mean=mean, std=std, batch_size=batch_size, device=device,
                         progress=progress)
    ok = np.flatnonzero(np.isfinite(emb).all(axis=1) & (np.linalg.norm(emb, axis=1) > 0))
    if ok.size == 0:
        raise ValueError("every visual element embeds to a zero or non-finite vector; no prototypes")
    lib = ConceptLibrary.prototype(emb[ok], np.asarray(pool.labels)[ok], n_concepts=min(int(n_concepts), ok.size),
                                   seed=seed)
    kind = _KIND_SINGULAR[pool.kind]
    lib.names = [f"class {pool.labels[i]} / {kind} of image {int(pool.source[i])} box "
                 f"{tuple(int(v) for v in pool.boxes[i])}" for i in ok[np.asarray(lib.meta["element_index"])]]
    return lib
