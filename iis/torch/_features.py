"""Representation features of a PyTorch model: :func:`extract_features`."""

from __future__ import annotations

import difflib
import os
import warnings
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from ..elements import Elements
from ._data import ImageDataset, data_config

__all__ = ["embed_elements", "extract_features", "find_classifier", "resolve_layer"]

_POOLS = ("auto", "avg", "max", "token", "flatten")
_CLASSIFIER_NAMES = ("fc", "head", "heads", "classifier", "_fc", "last_linear")


class _StopForward(Exception):
    """Raised from a hook once the wanted activation is captured (skips the rest)."""


# --------------------------------------------------------------------------------------
# Which module
# --------------------------------------------------------------------------------------
def _is_timm_model(model: nn.Module) -> bool:
    return callable(getattr(model, "forward_features", None)) and callable(getattr(model, "forward_head", None))


def find_classifier(model: nn.Module) -> nn.Module:
    """The final classifier of a torchvision-style model: the module whose input is the representation.

    The first of the attributes ``fc``, ``head``, ``heads``, ``classifier``, ``_fc``,
    ``last_linear`` that is a module; when it is a container, its last ``nn.Linear``;
    without any of them, the last ``nn.Linear`` of the model.

    Raises
    ------
    ValueError
        When no such module exists (pass ``layer=`` to :func:`extract_features`).
    """
    for name in _CLASSIFIER_NAMES:
        mod = getattr(model, name, None)
        if isinstance(mod, nn.Module) and not isinstance(mod, nn.Identity):
            if isinstance(mod, (nn.Linear, nn.Conv2d)):
                return mod
            linears = [m for m in mod.modules() if isinstance(m, nn.Linear)]
            if linears:
                return linears[-1]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1]
    raise ValueError(
        f"could not find the final classifier of {type(model).__name__} (no fc/head/heads/"
        "classifier attribute and no nn.Linear); pass layer='<module name>' to choose the layer"
    )


def resolve_layer(model: nn.Module, layer: str) -> nn.Module:
    """The submodule of ``model`` named ``layer`` (a name from ``model.named_modules()``)."""
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a module name (str) or None, got {type(layer).__name__}")
    modules = dict(model.named_modules())
    if layer in modules and layer != "":
        return modules[layer]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(layer, names, n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(
        f"{type(model).__name__} has no submodule named {layer!r}{hint} "
        f"(it has {len(names)} named modules, e.g. {', '.join(names[-5:])})"
    )


def _has_class_token(model: nn.Module) -> bool:
    for attr in ("cls_token", "class_token"):
        tok = getattr(model, attr, None)
        if isinstance(tok, torch.Tensor) and tok.numel() > 0:
            return True
    return False


def _pool(x: Any, pool: str, model: nn.Module, layout: str = "auto") -> torch.Tensor:
    """Reduce a captured activation to (N, d)."""
    if isinstance(x, (tuple, list)):
        tensors = [t for t in x if isinstance(t, torch.Tensor)]
        if not tensors:
            raise TypeError("the chosen layer produced no tensor")
        x = tensors[0]
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"the chosen layer produced a {type(x).__name__}, not a tensor")
    if x.ndim < 2:
        raise ValueError(f"the chosen layer produced a tensor of shape {tuple(x.shape)}; need (N, ...)")
    if x.ndim == 2 or pool == "flatten":
        return x.reshape(x.shape[0], -1)
    if layout == "auto":
        nhwc = str(getattr(model, "output_fmt", "NCHW")).endswith("NHWC")
    else:
        nhwc = layout == "NHWC"
    if x.ndim == 3:  # (N, T, D) tokens
        if pool == "token" or (pool == "auto" and _has_class_token(model)):
            return x[:, 0]
        if pool in ("avg", "auto"):
            return x.mean(dim=1)
        if pool == "max":
            return x.amax(dim=1)
    if pool == "token":
        raise ValueError(f"pool='token' needs a (N, tokens, d) activation, got shape {tuple(x.shape)}")
    dims = tuple(range(1, x.ndim - 1)) if (nhwc and x.ndim == 4) else tuple(range(2, x.ndim))
    if pool in ("avg", "auto"):
        return x.mean(dim=dims)
    return x.amax(dim=dims)


def _prefix_tokens(model: nn.Module) -> int:
    """Class/register tokens at the front of a ViT's token sequence (timm's ``num_prefix_tokens``)."""
    n = getattr(model, "num_prefix_tokens", None)
    if isinstance(n, int) and n >= 0:
        return n
    return 1 if _has_class_token(model) else 0


def _spatial(x: Any, model: nn.Module, layout: str) -> torch.Tensor:
    """A captured map as (N, H*W, d): (N, C, H, W) or (N, H, W, C) maps flattened over
    space, (N, T, d) token sequences without their prefix (class/register) tokens."""
    if isinstance(x, (tuple, list)):
        x = next((t for t in x if isinstance(t, torch.Tensor)), None)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"the chosen layer produced a {type(x).__name__}, not a tensor")
    if x.ndim == 3:
        return x[:, _prefix_tokens(model):]
    if x.ndim != 4:
        raise ValueError(f"spatial=True needs a (N, C, H, W) map or (N, tokens, d) sequence, got shape "
                         f"{tuple(x.shape)}; choose another layer=")
    nhwc = str(getattr(model, "output_fmt", "NCHW")).endswith("NHWC") if layout == "auto" else layout == "NHWC"
    if not nhwc:
        x = x.permute(0, 2, 3, 1)
    return x.reshape(x.shape[0], x.shape[1] * x.shape[2], x.shape[3])


def _make_forward(
    model: nn.Module, layer: str | None, layer_io: str, pool: str, layout: str, spatial: bool = False
) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[], None]]:
    """A function images -> (N, d) features (or (N, H*W, d) maps), and a cleanup that removes the hook."""
    if spatial and layer is None and _is_timm_model(model):
        return (lambda x: _spatial(model.forward_features(x), model, layout)), lambda: None
    if spatial and layer is None:
        pool_mod = getattr(model, "avgpool", None)
        if not isinstance(pool_mod, nn.Module):
            raise ValueError(
                f"spatial=True: cannot tell where the final feature map of {type(model).__name__} is "
                "(not a timm model and no avgpool module); pass layer='<module name>'"
            )
        layer, layer_io = next(n for n, m in model.named_modules() if m is pool_mod), "input"
    if layer is None and _is_timm_model(model):

        def forward_timm(x: torch.Tensor) -> torch.Tensor:
            out = model.forward_head(model.forward_features(x), pre_logits=True)
            return _pool(out, pool, model, layout)

        return forward_timm, lambda: None

    if layer is None:
        target = find_classifier(model)
        io = "input"
    else:
        target = resolve_layer(model, layer)
        io = layer_io
    store: dict[str, Any] = {}

    def pre_hook(module: nn.Module, args: tuple) -> None:
        if "x" not in store:
            store["x"] = args[0] if len(args) == 1 else args
            raise _StopForward

    def post_hook(module: nn.Module, args: tuple, output: Any) -> None:
        if "x" not in store:
            store["x"] = output
            raise _StopForward

    handle = target.register_forward_pre_hook(pre_hook) if io == "input" else target.register_forward_hook(post_hook)

    def forward_hooked(x: torch.Tensor) -> torch.Tensor:
        store.clear()
        try:
            model(x)
        except _StopForward:
            pass
        if "x" not in store:
            where = "the final classifier" if layer is None else f"layer {layer!r}"
            raise RuntimeError(f"{where} was not called during the forward pass of {type(model).__name__}")
        x = store.pop("x")
        return _spatial(x, model, layout) if spatial else _pool(x, pool, model, layout)

    return forward_hooked, handle.remove


# --------------------------------------------------------------------------------------
# Which data
# --------------------------------------------------------------------------------------
def _unpack(batch: Any) -> tuple[torch.Tensor, Any]:
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (list, tuple)) and batch:
        return batch[0], (batch[1] if len(batch) > 1 else None)
    if isinstance(batch, dict):
        for key in ("image", "images", "pixel_values", "input", "inputs", "x"):
            if key in batch:
                lab = next((batch[k] for k in ("label", "labels", "target", "targets", "y") if k in batch), None)
                return batch[key], lab
        raise ValueError(f"cannot find the images in a batch dict with keys {sorted(batch)}")
    raise TypeError(f"cannot read images from a batch of type {type(batch).__name__}")


def _loader_length(loader: torch.utils.data.DataLoader) -> int | None:
    """Number of samples the loader yields, when it can be known in advance."""
    if isinstance(loader.dataset, torch.utils.data.IterableDataset):
        return None
    bs = loader.batch_sampler
    if isinstance(bs, torch.utils.data.BatchSampler):
        try:
            n = len(bs.sampler)  # type: ignore[arg-type]
        except TypeError:
            return None
        return n - n % bs.batch_size if bs.drop_last else n
    return None


def _batches(data: Any, batch_size: int, num_workers: int) -> tuple[Iterator[tuple[torch.Tensor, Any]], int | None, int | None]:
    """(iterator of (images, labels), number of samples or None, number of batches or None)."""
    if isinstance(data, np.ndarray):
        if not np.issubdtype(data.dtype, np.floating):
            raise TypeError(
                f"an array of images must be float (already normalised for the model), got dtype "
                f"{data.dtype}; wrap raw uint8 images in iis.torch.ImageDataset(images, size=..., mean=..., std=...)"
            )
        data_t: Any = data
    elif isinstance(data, torch.Tensor):
        if not torch.is_floating_point(data):
            raise TypeError(
                f"a tensor of images must be floating point (already normalised), got {data.dtype}; "
                "wrap raw uint8 images in iis.torch.ImageDataset"
            )
        data_t = data
    else:
        data_t = None
    if data_t is not None:
        if data_t.ndim < 2:
            raise ValueError(f"data must have a leading sample dimension, got shape {tuple(data_t.shape)}")
        n = int(data_t.shape[0])

        def it_tensor() -> Iterator[tuple[torch.Tensor, Any]]:
            for s in range(0, n, batch_size):
                chunk = data_t[s : s + batch_size]
                if isinstance(chunk, np.ndarray):
                    chunk = torch.from_numpy(np.ascontiguousarray(chunk))
                yield chunk, None

        return it_tensor(), n, -(-n // batch_size)
    if isinstance(data, torch.utils.data.DataLoader):
        loader = data
        if isinstance(loader.sampler, torch.utils.data.RandomSampler):
            warnings.warn(
                "the DataLoader shuffles: features come back in its (random) order; use "
                "return_labels=True to get the matching labels, or a loader with shuffle=False",
                stacklevel=3,
            )
    elif isinstance(data, torch.utils.data.Dataset):
        # A private generator: iterating a DataLoader draws a base seed, which must not
        # come from (and advance) the global RNG of a training loop that calls us.
        loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                             generator=torch.Generator().manual_seed(0))
    else:
        raise TypeError(
            "data must be a torch DataLoader, a Dataset, a tensor or a float NumPy array of images, "
            f"got {type(data).__name__}"
        )
    n_samples = _loader_length(loader)
    try:
        n_batches: int | None = len(loader)
    except TypeError:
        n_batches = None
    return (_unpack(b) for b in loader), n_samples, n_batches


# --------------------------------------------------------------------------------------
# Model state
# --------------------------------------------------------------------------------------
def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def extract_features(
    model: nn.Module,
    data: Any,
    layer: str | None = None,
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    progress: bool = True,
    out: str | os.PathLike[str] | None = None,
    pool: str = "auto",
    layout: str = "auto",
    layer_io: str = "output",
    return_labels: bool = False,
    num_workers: int = 0,
    spatial: bool = False,
    dtype: Any = np.float32,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Features of ``data`` under ``model``: by default the input of its final classifier.

    Runs in eval mode under ``torch.inference_mode()``; the train/eval flag of every
    submodule and the model's device are restored afterwards, so this is safe to call
    inside a training loop.

    Parameters
    ----------
    model : torch.nn.Module
        A classifier. With ``layer=None``: for a timm model,
        ``forward_head(forward_features(x), pre_logits=True)`` (pooled CNN map, ViT class
        token, ...); for a torchvision-style model, the input of its final classifier
        (see :func:`find_classifier`: ``fc``, ``head``, ``heads``, ``classifier``).
    data : DataLoader, Dataset, torch.Tensor or numpy.ndarray
        Images already prepared for the model: a float tensor/array ``(N, C, H, W)``, a
        Dataset (items are images or ``(image, label, ...)`` tuples) or a DataLoader
        (batches are tensors, ``(images, labels, ...)`` or dicts with an ``"image"`` key).
        Raw uint8 images go through :class:`iis.torch.ImageDataset` first.
    layer : str, optional
        Name of a submodule (as in ``model.named_modules()``) whose output (or input, see
        ``layer_io``) is captured by a forward hook; the rest of the forward pass is
        skipped. ``layer="fc", layer_io="input"`` reproduces the published extractor.
    batch_size : int, default 64
        For tensors, arrays and Datasets (a DataLoader keeps its own).
    device : str or torch.device, optional
        Where to run; default: where the model's parameters are. The model is moved there
        for the call and moved back afterwards.
    progress : bool, default True
        Show a tqdm progress bar.
    out : path, optional
        Write the features to this ``.npy`` file as they are computed (a NumPy memmap, for
        splits that do not fit in memory) and return it opened read-only
        (``np.load(out, mmap_mode="r")``).
    pool : {"auto", "avg", "max", "token", "flatten"}, default "auto"
        How activations with more than two dimensions become vectors. ``auto``: a
        ``(N, C, H, W)`` map is averaged over space (``(N, H, W, C)`` for timm models with
        ``output_fmt="NHWC"``), a ``(N, T, D)`` token sequence gives its class token when
        the model has one and the token mean otherwise.
    layout : {"auto", "NCHW", "NHWC"}, default "auto"
        Axis order of 4-D activations: ``auto`` is NHWC for timm models whose
        ``output_fmt`` is ``"NHWC"`` (Swin and similar) and NCHW otherwise; set it for a
        layer whose order differs from the model's (e.g. a patch-embedding conv of a Swin).
    layer_io : {"output", "input"}, default "output"
        Capture the output or the input of ``layer``.
    return_labels : bool, default False
        Also return the labels carried by the Dataset/DataLoader, in the same order.
    num_workers : int, default 0
        DataLoader workers when a Dataset is given.
    spatial : bool, default False
        Return the final feature map before global pooling, ``(N, H*W, d)``: for a timm
        CNN the ``forward_features`` map flattened over space (row-major over H, W), for
        a timm ViT its patch tokens (class and register tokens dropped), for a
        torchvision-style CNN the input of its ``avgpool``; with ``layer`` that layer's
        map or tokens. ``pool`` must stay ``"auto"``. This is the input of
        :class:`iis.InfoDisent`; use ``out=`` when ``N * H*W * d`` does not fit in memory.
    dtype : {numpy.float32, numpy.float16}, default float32
        dtype of the returned features (float16 halves the size of spatial maps).

    Returns
    -------
    numpy.ndarray
        ``(N, d)`` features, or ``(N, H*W, d)`` with ``spatial=True``, of ``dtype`` (a
        read-only memmap when ``out`` is given).
    labels : numpy.ndarray
        Only with ``return_labels=True``.

    Examples
    --------
    >>> import timm, torch, iis.torch
    >>> model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    >>> F = iis.torch.extract_features(model, torch.randn(4, 3, 64, 64), progress=False)
    >>> F.shape, F.dtype
    ((4, 512), dtype('float32'))
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    batch_size = _check_positive_int(batch_size, "batch_size")
    if pool not in _POOLS:
        raise ValueError(f"pool must be one of {_POOLS}, got {pool!r}")
    if layout not in ("auto", "NCHW", "NHWC"):
        raise ValueError(f"layout must be 'auto', 'NCHW' or 'NHWC', got {layout!r}")
    if layer_io not in ("output", "input"):
        raise ValueError(f"layer_io must be 'output' or 'input', got {layer_io!r}")
    if not isinstance(spatial, (bool, np.bool_)):
        raise TypeError(f"spatial must be True or False, got {spatial!r}")
    if spatial and pool != "auto":
        raise ValueError(f"spatial=True returns the map before pooling; pool={pool!r} does not apply")
    try:
        out_dtype = np.dtype(dtype)
    except TypeError:
        out_dtype = None
    if out_dtype not in (np.dtype(np.float32), np.dtype(np.float16)):
        raise ValueError(f"dtype must be float32 or float16, got {dtype!r}")
    if layer is not None:
        resolve_layer(model, layer)  # fail before touching the data
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")

    batches, n_expected, n_batches = _batches(data, batch_size, num_workers)
    if out is not None and n_expected is None:
        raise ValueError(
            "out= needs the number of samples in advance; pass a sized Dataset, a tensor, or a "
            "DataLoader with a sized sampler (not an IterableDataset)"
        )
    if n_expected == 0:
        raise ValueError("data holds no samples")

    home = _model_device(model)
    run_on = home if device is None else torch.device(device)
    modes = [(m, m.training) for m in model.modules()]
    if return_labels and isinstance(data, (torch.Tensor, np.ndarray)):
        raise ValueError("return_labels=True but the data carries no labels (a bare tensor/array of images)")
    forward, cleanup = _make_forward(model, layer, layer_io, pool, layout, bool(spatial))
    chunks: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    mm: np.memmap | None = None
    written = 0
    ok = False
    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=n_batches, desc="features", unit="batch", leave=False)
        except ImportError:  # pragma: no cover
            bar = None
    try:
        if run_on != home:
            model.to(run_on)
        model.eval()
        with torch.inference_mode():
            for x, y in batches:
                if not isinstance(x, torch.Tensor):
                    x = torch.as_tensor(np.asarray(x))
                if not torch.is_floating_point(x):
                    raise TypeError(
                        f"images must be floating point (normalised), got a batch of dtype {x.dtype}; "
                        "wrap raw uint8 images in iis.torch.ImageDataset"
                    )
                if x.shape[0] == 0:
                    continue
                f = forward(x.to(run_on, non_blocking=True))
                if f.shape[0] != x.shape[0]:
                    raise RuntimeError(
                        f"the model returned {f.shape[0]} feature rows for a batch of {x.shape[0]} images"
                    )
                f_np = f.detach().to("cpu", torch.float32).numpy()
                if spatial and f_np.shape[1] == 0:
                    raise ValueError(f"the feature map has no positions (shape {f_np.shape})")
                if not np.all(np.isfinite(f_np)):
                    warnings.warn("some features are NaN or infinite", RuntimeWarning, stacklevel=2)
                if out is not None:
                    if mm is None:
                        assert n_expected is not None
                        mm = np.lib.format.open_memmap(
                            os.fspath(out), mode="w+", dtype=out_dtype, shape=(n_expected,) + f_np.shape[1:]
                        )
                    if mm.shape[1:] != f_np.shape[1:]:
                        raise RuntimeError(f"a batch gave features of shape {f_np.shape[1:]}, earlier ones "
                                           f"{mm.shape[1:]} (images of different sizes?)")
                    if written + f_np.shape[0] > n_expected:
                        raise RuntimeError(f"data yielded more than the {n_expected} samples announced")
                    mm[written : written + f_np.shape[0]] = f_np
                else:
                    chunks.append(f_np.astype(out_dtype, copy=False))
                written += f_np.shape[0]
                if return_labels:
                    if y is None:
                        raise ValueError("return_labels=True but the data carries no labels")
                    labels.append(np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y).reshape(-1))
                if bar is not None:
                    bar.update(1)
        ok = True
    finally:
        cleanup()
        if bar is not None:
            bar.close()
        for m, was in modes:
            m.training = was
        if run_on != home:
            model.to(home)
        if not ok and mm is not None:  # do not leave a half-written .npy behind
            del mm
            try:
                os.remove(os.fspath(out))  # type: ignore[arg-type]
            except OSError:
                pass
    if written == 0:
        raise ValueError("data holds no samples")
    if out is not None:
        assert mm is not None
        if written != n_expected:
            raise RuntimeError(f"data yielded {written} samples, expected {n_expected}")
        mm.flush()
        del mm
        feats: np.ndarray = np.load(os.fspath(out), mmap_mode="r", allow_pickle=False)
    else:
        feats = np.concatenate(chunks, axis=0) if len(chunks) > 1 else chunks[0]
        feats = np.ascontiguousarray(feats, dtype=out_dtype)
    if return_labels:
        return feats, np.concatenate(labels)
    return feats


def embed_elements(elements: Elements, model: nn.Module, layer: str | None = None, *, size: int | None = None,
                   mean: Any = None, std: Any = None, batch_size: int = 64, device: Any = None,
                   progress: bool = True, **kwargs: Any) -> np.ndarray:
    """Embed visual elements with ``model`` at ``layer`` (the layer used for the features).

    The element images are converted with :class:`ImageDataset` (resize to ``size``,
    scale to [0, 1], normalise with ``mean``/``std``; the defaults come from
    :func:`data_config` of ``model``) and passed to :func:`extract_features`. Use the
    same ``size``, ``mean``, ``std`` and ``layer`` as for the images whose features are
    scored.

    Parameters
    ----------
    elements : iis.elements.Elements
        From :func:`iis.elements.patches` or :func:`iis.elements.segments`.
    model, layer, batch_size, device, progress, **kwargs
        As :func:`extract_features`.
    size, mean, std : optional
        As :class:`ImageDataset`; default :func:`data_config` of ``model``.

    Returns
    -------
    numpy.ndarray
        ``(n, d)`` float32 embeddings.
    """
    if not isinstance(elements, Elements):
        raise TypeError(f"elements must be an iis.elements.Elements, got {type(elements).__name__}")
    cfg = data_config(model)
    ds = ImageDataset(elements.images, size=cfg["size"] if size is None else size,
                      mean=cfg["mean"] if mean is None else mean, std=cfg["std"] if std is None else std)
    return extract_features(model, ds, layer, batch_size=batch_size, device=device, progress=progress, **kwargs)
