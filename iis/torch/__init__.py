"""PyTorch and timm integration (``pip install "iis[torch]"``).

From a model and images to features, visual-element embeddings and IIS during training.
``import iis`` never imports this subpackage (torch stays optional).
"""

try:
    import torch as _torch  # noqa: F401
except ImportError as _exc:  # pragma: no cover - exercised only without torch
    raise ImportError('iis.torch needs PyTorch: pip install "iis[torch]"') from _exc

from ._data import IMAGENET_MEAN, IMAGENET_STD, ImageDataset, data_config
from ._features import embed_elements, extract_features, find_classifier, resolve_layer
from ._models import efficientnet_lite, efficientnet_lite0, load_model, packaged_efficientnet_lite0_path
from ._monitor import IISMonitor
from ._clip import clip_embeddings
from ._finetune import (ConceptHead, FeatureModel, InterpretabilityLoss, LossParts, build_prototypes, fit_linear,
                        keep_count)
