"""Fine-tuning with interpretability maximisation (METHOD.md section 8, paper Eq. 8).

The objective is

    L = CE(h(f(x)), y) + weight * CE(g(mask_s(norm(f(x) @ unit(P).T))), y)

where ``f`` is the backbone (pre-logit features), ``h`` the model's own classifier,
``P`` a frozen library of M concept vectors (prototypes taken from the pre-trained
backbone), ``mask_s`` keeps the ``k(s) = M - floor(M*s)`` activations of largest
magnitude in each sample (ties to the lower concept index), and ``g`` a linear
classifier over the M concepts, trained jointly.  The mask is a constant in the
backward pass: it is chosen under ``no_grad`` and applied as a 0/1 multiplier, so the
gradient reaches the kept activations (and through them ``f`` and the backbone) but
never flows through the selection itself.

Public names: :class:`ConceptHead`, :class:`InterpretabilityLoss`, :class:`LossParts`,
:class:`FeatureModel`, :func:`build_prototypes`, :func:`fit_linear`, :func:`kept_count`,
:func:`topk_mask`.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..elements import patches, segments
from ._features import embed_elements

__all__ = [
    "ConceptHead",
    "InterpretabilityLoss",
    "LossParts",
    "FeatureModel",
    "build_prototypes",
    "fit_linear",
    "kept_count",
    "topk_mask",
]

_NORMALIZE_OPTIONS = ("layernorm", "none")
_KIND_SINGULAR = {"patches": "patch", "segments": "segment"}
_POOL_FACTOR = 4  # elements embedded per prototype kept (before the zero-norm filter)
_LN_EPS = 1e-5


# --------------------------------------------------------------------------------------
# Sparsity mask
# --------------------------------------------------------------------------------------
def _check_sparsity(sparsity: Any) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise TypeError(f"sparsity must be a real number in [0, 1), got {sparsity!r}")
    s = float(sparsity)
    if not (0.0 <= s < 1.0):
        raise ValueError(f"sparsity must lie in [0, 1), got {sparsity!r}")
    return s


def kept_count(n_concepts: int, sparsity: float) -> int:
    """Number of concepts kept per sample at sparsity ``s``: ``M - floor(M*s)``.

    Parameters
    ----------
    n_concepts : int
        M, the number of concepts (>= 1).
    sparsity : float
        s in [0, 1).

    Returns
    -------
    int
        k(s), between 1 and M.

    Notes
    -----
    ``floor(M*s + 1e-9)``: the same guard against representation error as the C core
    (``iis_keep_count``), so the head and ``iis.score`` keep the same number.
    """
    if isinstance(n_concepts, bool) or not isinstance(n_concepts, numbers.Integral):
        raise TypeError(f"n_concepts must be an integer, got {n_concepts!r}")
    m = int(n_concepts)
    if m < 1:
        raise ValueError(f"n_concepts must be >= 1, got {m}")
    s = _check_sparsity(sparsity)
    dropped = math.floor(m * s + 1e-9)
    return m - dropped


@torch.no_grad()
def topk_mask(activations: torch.Tensor, k: int) -> torch.Tensor:
    """Per-sample hard top-k mask by magnitude, ties to the lower concept index.

    Parameters
    ----------
    activations : torch.Tensor
        (N, M) activations.
    k : int
        Number of entries kept per row, 0 <= k <= M.

    Returns
    -------
    torch.Tensor
        (N, M) tensor of 0/1 with the dtype and device of ``activations``; it never
        requires grad (computed under ``torch.no_grad``).
    """
    if activations.ndim != 2:
        raise ValueError(f"activations must be 2-D (N, M), got shape {tuple(activations.shape)}")
    n, m = activations.shape
    k = int(k)
    if not 0 <= k <= m:
        raise ValueError(f"k must lie in [0, {m}], got {k}")
    a = activations.detach()
    if k == m:
        return torch.ones_like(a)
    mask = torch.zeros_like(a)
    if k == 0 or n == 0:
        return mask
    # A stable descending sort keeps equal magnitudes in index order, so among ties the
    # lower concept index comes first and wins.
    order = torch.sort(a.abs(), dim=1, descending=True, stable=True).indices[:, :k]
    mask.scatter_(1, order, 1.0)
    return mask


# --------------------------------------------------------------------------------------
# Prototype input handling
# --------------------------------------------------------------------------------------
def _prototype_matrix(prototypes: Any) -> torch.Tensor:
    """(M, d) float64 CPU tensor from an array, a tensor or a ConceptLibrary; validated."""
    source = prototypes
    if hasattr(prototypes, "vectors") and not isinstance(prototypes, (np.ndarray, torch.Tensor)):
        source = prototypes.vectors
    if isinstance(source, torch.Tensor):
        mat = source.detach().to(device="cpu", dtype=torch.float64)
    else:
        try:
            arr = np.asarray(source)
        except Exception as exc:  # pragma: no cover - exotic inputs
            raise TypeError(
                f"prototypes must be an (M, d) array, tensor or ConceptLibrary, got {type(prototypes).__name__}"
            ) from exc
        if arr.dtype == object or not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
            raise TypeError(f"prototypes must hold real numbers, got dtype {arr.dtype}")
        mat = torch.from_numpy(np.array(arr, dtype=np.float64))
    if mat.ndim != 2:
        raise ValueError(f"prototypes must be 2-D (M, d), got shape {tuple(mat.shape)}")
    if mat.shape[0] < 1 or mat.shape[1] < 1:
        raise ValueError(f"prototypes must have at least one concept and one dimension, got shape {tuple(mat.shape)}")
    if not torch.isfinite(mat).all():
        raise ValueError("prototypes contain NaN or Inf")
    norms = mat.norm(dim=1)
    zero = torch.nonzero(norms == 0).flatten()
    if zero.numel():
        raise ValueError(f"prototypes has zero-norm concept vectors at rows {zero[:10].tolist()}")
    return mat


def _unit_rows(mat: torch.Tensor) -> torch.Tensor:
    return mat / mat.norm(dim=1, keepdim=True)


# --------------------------------------------------------------------------------------
# The concept head g(mask_s(norm(f @ unit(P).T)))
# --------------------------------------------------------------------------------------
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
        s in [0, 1); each sample keeps its ``k(s) = M - floor(M*s)`` activations of
        largest magnitude (ties to the lower concept index).
    normalize : {"layernorm", "none"}, default "layernorm"
        ``layernorm``: per sample across the M concepts, ``(a - mean) / sqrt(var + 1e-5)``
        with the biased variance and no affine parameters.

    Attributes
    ----------
    concepts : torch.Tensor
        (M, d) unit concept vectors (buffer, float32).
    classifier : torch.nn.Linear
        ``g``.
    n_concepts, in_features, n_classes, k : int

    Notes
    -----
    The projection and the normalisation always run in float32, also inside
    ``torch.autocast`` (for numerical stability of the layer norm in half precision);
    ``g`` itself follows the autocast policy.  The mask is computed under
    ``torch.no_grad`` and applied as a constant 0/1 multiplier.

    Examples
    --------
    >>> import torch
    >>> head = ConceptHead(torch.randn(200, 64), n_classes=10, sparsity=0.1)
    >>> head(torch.randn(8, 64)).shape
    torch.Size([8, 10])
    """

    concepts: torch.Tensor

    def __init__(
        self,
        prototypes: Any,
        n_classes: int,
        sparsity: float = 0.1,
        normalize: str = "layernorm",
    ) -> None:
        super().__init__()
        mat = _prototype_matrix(prototypes)
        if isinstance(n_classes, bool) or not isinstance(n_classes, numbers.Integral):
            raise TypeError(f"n_classes must be an integer, got {n_classes!r}")
        if int(n_classes) < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes}")
        if not isinstance(normalize, str) or normalize not in _NORMALIZE_OPTIONS:
            raise ValueError(f"normalize must be one of {_NORMALIZE_OPTIONS}, got {normalize!r}")
        self._sparsity = _check_sparsity(sparsity)
        self.normalize = normalize
        self.n_classes = int(n_classes)
        self.register_buffer("concepts", _unit_rows(mat).to(torch.float32))
        self.classifier = nn.Linear(mat.shape[0], self.n_classes)
        self.names: Optional[list] = None
        names = getattr(prototypes, "names", None)
        if names is not None and not isinstance(prototypes, (np.ndarray, torch.Tensor)):
            self.names = [str(n) for n in names]

    # ---- properties -----------------------------------------------------------------
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
        """Concepts kept per sample, ``M - floor(M*s)``."""
        return kept_count(self.n_concepts, self._sparsity)

    def extra_repr(self) -> str:
        return (
            f"n_concepts={self.n_concepts}, in_features={self.in_features}, "
            f"n_classes={self.n_classes}, sparsity={self._sparsity}, k={self.k}, "
            f"normalize={self.normalize!r}"
        )

    # ---- prototypes -------------------------------------------------------------------
    @torch.no_grad()
    def set_prototypes(self, prototypes: Any) -> None:
        """Replace the frozen concept vectors (e.g. refreshed from the current backbone).

        Parameters
        ----------
        prototypes : array-like, torch.Tensor or iis.ConceptLibrary
            (M, d) with the same M and d as before (``g`` keeps its weights).
        """
        mat = _prototype_matrix(prototypes)
        if tuple(mat.shape) != tuple(self.concepts.shape):
            raise ValueError(
                f"new prototypes have shape {tuple(mat.shape)} but the head was built with "
                f"{tuple(self.concepts.shape)} (M, d)"
            )
        self.concepts.copy_(_unit_rows(mat).to(self.concepts.dtype))

    # ---- forward pieces -----------------------------------------------------------------
    def _check_features(self, features: torch.Tensor) -> None:
        if not isinstance(features, torch.Tensor):
            raise TypeError(f"features must be a torch.Tensor, got {type(features).__name__}")
        if features.ndim != 2:
            raise ValueError(f"features must be 2-D (batch, d), got shape {tuple(features.shape)}")
        if features.shape[1] != self.in_features:
            raise ValueError(
                f"features has shape {tuple(features.shape)} but the concept library has d={self.in_features}"
            )
        if not features.is_floating_point():
            raise TypeError(f"features must be floating point, got dtype {features.dtype}")

    def activations(self, features: torch.Tensor) -> torch.Tensor:
        """Normalised concept activations ``norm(f @ unit(P).T)``, (N, M).

        Computed in float32 (float64 when the features or the head are float64), also
        under ``torch.autocast``.
        """
        self._check_features(features)
        dt = torch.promote_types(torch.promote_types(torch.float32, features.dtype), self.concepts.dtype)
        with torch.autocast(device_type=features.device.type, enabled=False):
            a = features.to(dt) @ self.concepts.to(dt).t()
            if self.normalize == "layernorm":
                a = F.layer_norm(a, (a.shape[1],), eps=_LN_EPS)
        return a

    def mask(self, activations: torch.Tensor) -> torch.Tensor:
        """The 0/1 sparsity mask of ``activations`` (no gradient)."""
        return topk_mask(activations, self.k)

    def concept_activations(self, features: torch.Tensor) -> torch.Tensor:
        """Masked activations ``mask_s(norm(f @ unit(P).T))`` (the input of ``g``)."""
        a = self.activations(features)
        return a * self.mask(a)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits of the interpretation-based prediction ``g(...)``, shape (N, K)."""
        z = self.concept_activations(features)
        if not torch.is_autocast_enabled(features.device.type):
            z = z.to(self.classifier.weight.dtype)
        return self.classifier(z)

    def fit(self, features: torch.Tensor, labels: Any, l2: float = 1e-3, max_iter: int = 300) -> "ConceptHead":
        """Fit ``g`` alone on held (frozen) features: a warm start before fine-tuning.

        Multinomial logistic regression on ``mask_s(norm(f @ unit(P).T))`` with an L2
        penalty, solved by :func:`fit_linear`; the prototypes are unchanged.

        Parameters
        ----------
        features : torch.Tensor or numpy.ndarray
            (N, d) features, e.g. from :func:`iis.torch.extract_features`.
        labels : array-like
            (N,) class indices in [0, n_classes).
        l2, max_iter : float, int
            See :func:`fit_linear`.

        Returns
        -------
        ConceptHead
            ``self``.
        """
        f = torch.as_tensor(np.asarray(features) if not isinstance(features, torch.Tensor) else features)
        f = f.to(self.concepts.device)
        with torch.no_grad():
            z = self.concept_activations(f)
        fit_linear(self.classifier, z, labels, l2=l2, max_iter=max_iter)
        return self


def fit_linear(linear: nn.Linear, inputs: Any, labels: Any, l2: float = 1e-3, max_iter: int = 300) -> nn.Linear:
    """Fit an ``nn.Linear`` as a multinomial logistic regression (L-BFGS, in place).

    Minimises ``mean CE(linear(x), y) + l2/2 * ||W||^2`` from zero weights with L-BFGS
    (strong Wolfe line search; deterministic). Used to warm-start the model's classifier
    ``h`` and the concept classifier ``g`` on frozen pre-trained features, so that the
    accuracies "before fine-tuning" are those of the pre-trained representation.

    Parameters
    ----------
    linear : torch.nn.Linear
        (in_features -> n_classes); overwritten.
    inputs : torch.Tensor or numpy.ndarray
        (N, in_features).
    labels : array-like
        (N,) integer classes in [0, out_features).
    l2 : float, default 1e-3
    max_iter : int, default 300

    Returns
    -------
    torch.nn.Linear
        ``linear``.
    """
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
    w, b = linear.weight, linear.bias
    x = torch.as_tensor(np.asarray(inputs) if not isinstance(inputs, torch.Tensor) else inputs)
    x = x.detach().to(w.device, w.dtype)
    y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels).to(w.device)
    if x.ndim != 2 or x.shape[1] != linear.in_features:
        raise ValueError(f"inputs has shape {tuple(x.shape)} but the layer takes {linear.in_features} features")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"labels must be 1-D with {x.shape[0]} entries, got shape {tuple(y.shape)}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise TypeError(f"labels must be integer class indices, got dtype {y.dtype}")
    y = y.long()
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= linear.out_features):
        raise ValueError(f"labels must lie in [0, {linear.out_features}), got [{int(y.min())}, {int(y.max())}]")
    if not (l2 >= 0 and math.isfinite(l2)):
        raise ValueError(f"l2 must be a finite number >= 0, got {l2!r}")
    params = [w] + ([b] if b is not None else [])
    with torch.no_grad():
        w.zero_()
        if b is not None:
            b.zero_()
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=int(max_iter), tolerance_grad=1e-6,
                            tolerance_change=1e-10, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(F.linear(x, w, b), y) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    for p in params:
        p.grad = None
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
    >>> features, logits = model_with_features(x)           # doctest: +SKIP
    >>> loss = criterion(features, logits, y)               # doctest: +SKIP
    """

    def __init__(
        self,
        head: ConceptHead,
        weight: float = 1.0,
        *,
        detach_features: bool = False,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if not isinstance(head, ConceptHead):
            raise TypeError(f"head must be an iis.torch.ConceptHead, got {type(head).__name__}")
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
            raise TypeError(f"weight must be a real number, got {weight!r}")
        if not (math.isfinite(float(weight)) and float(weight) >= 0):
            raise ValueError(f"weight must be finite and >= 0, got {weight!r}")
        if not (0.0 <= float(label_smoothing) < 1.0):
            raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing!r}")
        self.head = head
        self.weight = float(weight)
        self.detach_features = bool(detach_features)
        self.label_smoothing = float(label_smoothing)

    def extra_repr(self) -> str:
        return f"weight={self.weight}, detach_features={self.detach_features}"

    def forward(
        self,
        features: torch.Tensor,
        logits: torch.Tensor,
        target: torch.Tensor,
        return_parts: bool = False,
    ) -> Union[torch.Tensor, LossParts]:
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
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
            raise ValueError(
                f"logits must be a 2-D tensor (batch, classes), got "
                f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}"
            )
        if not isinstance(target, torch.Tensor) or target.ndim != 1:
            raise ValueError("target must be a 1-D tensor of class indices")
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")
        if not isinstance(features, torch.Tensor) or features.ndim != 2:
            raise ValueError(
                f"features must be a 2-D tensor (batch, d), got "
                f"{tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__}"
            )
        b = target.shape[0]
        if features.shape[0] != b or logits.shape[0] != b:
            raise ValueError(
                f"batch sizes disagree: features {features.shape[0]}, logits {logits.shape[0]}, target {b}"
            )
        if logits.shape[1] != self.head.n_classes:
            raise ValueError(
                f"logits have {logits.shape[1]} classes but the concept head has n_classes={self.head.n_classes}"
            )
        target = target.long()
        ce_h = F.cross_entropy(logits.float(), target, label_smoothing=self.label_smoothing)
        f = features.detach() if self.detach_features else features
        logits_g = self.head(f)
        ce_g = F.cross_entropy(logits_g.float(), target, label_smoothing=self.label_smoothing)
        loss = ce_h + self.weight * ce_g
        if return_parts:
            return LossParts(loss, ce_h.detach(), ce_g.detach(), logits_g)
        return loss


# --------------------------------------------------------------------------------------
# Model wrapper returning (features, logits)
# --------------------------------------------------------------------------------------
def _find_classifier(model: nn.Module) -> nn.Module:
    """The module whose input is the pre-logit representation (as ``extract_features``)."""
    get = getattr(model, "get_classifier", None)  # timm
    if callable(get) and callable(getattr(model, "forward_head", None)):
        clf = get()
        if isinstance(clf, nn.Module) and not isinstance(clf, nn.Identity):
            return clf
    from ._features import find_classifier

    return find_classifier(model)


class FeatureModel(nn.Module):
    """Wrap a classification model so that it returns ``(features, logits)``.

    The features are the input of the final classifier (timm ``get_classifier()``,
    torchvision ``fc``/``classifier``/``heads``, or the last ``nn.Linear``), captured by
    a forward pre-hook in the same forward pass as the logits, so gradients flow from
    both back into the backbone.

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
        clf = _find_classifier(model) if classifier is None else classifier
        if not any(m is clf for m in model.modules()):
            raise ValueError("classifier must be a submodule of model")
        self._classifier_ref = [clf]  # not registered twice as a submodule
        self._captured: Optional[torch.Tensor] = None
        self._hook = clf.register_forward_pre_hook(self._capture)

    @property
    def classifier(self) -> nn.Module:
        """The classifier ``h`` whose input is captured."""
        return self._classifier_ref[0]

    def _capture(self, module: nn.Module, args: tuple) -> None:
        x = args[0]
        if x.ndim > 2:
            x = torch.flatten(x, 1)
        self._captured = x

    def forward(self, x: torch.Tensor) -> tuple:
        self._captured = None
        logits = self.model(x)
        feats = self._captured
        self._captured = None
        if feats is None:
            raise RuntimeError("the classifier was not called during the forward pass")
        return feats, logits


# --------------------------------------------------------------------------------------
# Prototypes from a pre-trained backbone
# --------------------------------------------------------------------------------------
def build_prototypes(
    model: nn.Module,
    images: Any,
    labels: Any,
    n_concepts: int = 200,
    *,
    elements: str = "patches",
    per_class: Optional[int] = 10,
    grid: int = 4,
    n_segments: Sequence[int] = (10, 20, 30),
    size: Optional[int] = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    seed: int = 0,
    batch_size: int = 64,
    device: Any = None,
    progress: bool = False,
):
    """Prototype concept library: embeddings of visual elements of training images.

    The elements (grid patches or SLIC segments, :mod:`iis.elements`) of ``per_class``
    seeded images of every class are cut out, ``n_concepts`` of them are chosen
    stratified across classes with ``seed`` (METHOD.md section 6), and they are embedded
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
    size : int, optional
        Side at which the elements are fed to the model (default :func:`data_config`).
    mean, std : sequence of 3 floats, optional
        Normalisation for the model (default :func:`data_config`).
    seed : int, default 0
    batch_size : int, default 64
    device : str or torch.device, optional
    progress : bool, default False

    Returns
    -------
    iis.ConceptLibrary
        ``kind="prototype"``; names say class, element kind, source image and box.
    """
    import iis

    if isinstance(n_concepts, bool) or not isinstance(n_concepts, numbers.Integral) or n_concepts < 1:
        raise ValueError(f"n_concepts must be a positive integer, got {n_concepts!r}")
    if elements == "patches":
        el = patches(images, labels, grid=grid, per_class=per_class, seed=seed)
    elif elements == "segments":
        el = segments(images, labels, n_segments=n_segments, per_class=per_class, seed=seed, progress=progress)
    else:
        raise ValueError(f"elements must be 'patches' or 'segments', got {elements!r}")
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
    names = np.array([
        f"class {lab} / {_KIND_SINGULAR.get(pool.kind, pool.kind)} of image {int(src)} box {tuple(int(v) for v in box)}"
        for lab, src, box in zip(pool.labels, pool.source, pool.boxes)
    ])
    n = min(int(n_concepts), ok.size)
    lib = iis.ConceptLibrary.prototype(emb[ok], np.asarray(pool.labels)[ok], n_concepts=n, seed=seed)
    picked = lib.meta.get("element_index") if isinstance(getattr(lib, "meta", None), dict) else None
    if picked is not None and len(picked) == lib.vectors.shape[0]:
        lib.names = [str(v) for v in names[ok][np.asarray(picked, dtype=np.int64)]]
    return lib
