"""iis.elements: SLIC segments obey the published filters; patches; seeded per-class choice."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image
from skimage.segmentation import slic

from iis.datasets import load_digits_images, load_photos, select_per_class, train_eval_split
from iis.elements import Elements, as_image_list, patches, segments


@pytest.fixture(scope="module")
def photos():
    # Real photographs, reduced so that SLIC stays fast.
    ph = load_photos(["chelsea", "coffee", "astronaut", "rocket"], size=96)
    return np.stack(list(ph.values())), np.array([0, 1, 0, 1])


def _reference_selection(img, n_segments, min_area, max_jaccard, max_per_setting):
    """Pure NumPy reading of the published extractor (with its label-range bug fixed)."""
    kept, per_setting, rejected = [], [], {"area": 0, "jaccard": 0}
    for n in n_segments:
        seg = slic(img, n_segments=n, compactness=10.0, sigma=1.0, start_label=1, channel_axis=-1)
        count = 0
        for s in range(1, seg.max() + 1):
            mask = (seg == s).astype(float)
            if not np.mean(mask) > min_area:
                rejected["area"] += 1
                continue
            if any(np.sum(m * mask) / np.sum((m + mask) > 0) > max_jaccard for m in kept):
                rejected["jaccard"] += 1
                continue
            kept.append(mask)
            per_setting.append(n)
            count += 1
            if max_per_setting is not None and count >= max_per_setting:
                break
    return [m.astype(bool) for m in kept], per_setting, rejected


def _jaccard(a, b):
    return np.count_nonzero(a & b) / np.count_nonzero(a | b)


def test_segments_match_reference_and_obey_filters(photos):
    imgs, labels = photos
    el = segments(imgs, labels, return_masks=True)
    assert isinstance(el, Elements) and el.kind == "segments"
    assert el.images.shape[1:] == (96, 96, 3) and el.images.dtype == np.uint8
    for i in range(len(imgs)):
        ref_masks, ref_settings, _ = _reference_selection(imgs[i], (10, 20, 30), 0.001, 0.5, 5)
        mine = np.flatnonzero(el.source == i)
        assert len(mine) == len(ref_masks) > 0
        for j, ref, n in zip(mine, ref_masks, ref_settings):
            assert np.array_equal(el.masks[j], ref)
            assert el.setting[j] == n
    # The filters, checked directly on the output.
    assert np.all(el.area > 0.001)
    for i in range(len(imgs)):
        idx = np.flatnonzero(el.source == i)
        for n in (10, 20, 30):
            assert np.count_nonzero(el.setting[idx] == n) <= 5
        for a in range(len(idx)):
            np.testing.assert_allclose(el.area[idx[a]], el.masks[idx[a]].mean())
            for b in range(a + 1, len(idx)):
                assert _jaccard(el.masks[idx[a]], el.masks[idx[b]]) <= 0.5
    assert el.labels.tolist() == labels[el.source].tolist()


def test_segment_crop_fill_and_resize(photos):
    imgs, _ = photos
    el = segments(imgs[:2], return_masks=True, size=(40, 50), fill=117)
    assert el.images.shape[1:] == (40, 50, 3)
    for j in range(len(el)):
        mask = el.masks[j]
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        top, left, bottom, right = el.boxes[j]
        # The box is the tight, inclusive bounding box of the segment.
        assert (top, bottom - 1, left, right - 1) == (rows[0], rows[-1], cols[0], cols[-1])
        filled = np.where(mask[..., None], imgs[el.source[j]], 117).astype(np.uint8)
        crop = filled[top:bottom, left:right]
        expect = np.asarray(Image.fromarray(crop).resize((50, 40), Image.BICUBIC))
        assert np.array_equal(el.images[j], expect)
        # Outside the segment the crop is the grey fill.
        assert np.all(crop[~mask[top:bottom, left:right]] == 117)


def test_jaccard_filter_removes_duplicates(photos):
    img = photos[0][:1]
    once = segments(img, n_segments=(10,), max_per_setting=None, return_masks=True)
    twice = segments(img, n_segments=(10, 10), max_per_setting=None)
    # The second, identical segmentation has Jaccard 1 with the first: all dropped.
    assert len(twice) == len(once) > 3
    assert set(twice.setting.tolist()) == {10}
    no_filter = segments(img, n_segments=(10, 10), max_per_setting=None, max_jaccard=1.0)
    assert len(no_filter) == 2 * len(once)
    # Every segment above the area threshold is visited, the last label included.
    seg = slic(img[0], n_segments=10, compactness=10.0, sigma=1.0, start_label=1, channel_axis=-1)
    assert len(once) == sum((seg == s).mean() > 0.001 for s in range(1, seg.max() + 1))
    assert any(np.array_equal(m, seg == seg.max()) for m in once.masks)


def test_area_filter_drops_small_segments(photos):
    img = photos[0][2]
    el = segments(img[None], n_segments=(30,), max_per_setting=None, min_area=0.03)
    _, _, rejected = _reference_selection(img, (30,), 0.03, 0.5, None)
    assert rejected["area"] > 0, "the test image must have segments below the threshold"
    assert len(el) > 0 and np.all(el.area > 0.03)
    seg = slic(img, n_segments=30, compactness=10.0, sigma=1.0, start_label=1, channel_axis=-1)
    assert len(el) == sum((seg == s).mean() > 0.03 for s in range(1, seg.max() + 1))


def test_segments_of_real_digits_per_class_seeded():
    imgs, labels = load_digits_images(size=32)
    el = segments(imgs, labels, per_class=3, seed=1)
    src = np.unique(el.source)
    assert np.bincount(labels[src], minlength=10).tolist() == [3] * 10
    assert np.array_equal(src, select_per_class(labels, 3, seed=1))
    again = segments(imgs, labels, per_class=3, seed=1)
    assert np.array_equal(again.images, el.images)
    other = segments(imgs, labels, per_class=3, seed=2)
    assert not np.array_equal(np.unique(other.source), src)
    assert 30 <= len(el) <= 30 * 15


def test_patches_grid_boxes_and_resize():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(66, 70, 3), dtype=np.uint8)
    el = patches([img, img[::-1]], labels=["a", "b"], grid=4, size=32)
    assert len(el) == 32 and el.images.shape == (32, 32, 32, 3)
    assert el.boxes[0].tolist() == [0, 0, 16, 17]
    assert el.boxes[15].tolist() == [48, 51, 64, 68]  # remainder rows/cols dropped, as published
    np.testing.assert_allclose(el.area, 16 * 17 / (66 * 70))
    expect = np.asarray(Image.fromarray(np.ascontiguousarray(img[16:32, 34:51])).resize((32, 32), Image.BICUBIC))
    assert np.array_equal(el.images[6], expect)  # row 1, column 2
    assert el.labels.tolist() == ["a"] * 16 + ["b"] * 16
    native = patches(img[None], grid=2)
    assert native.images.shape == (4, 66, 70, 3)
    with pytest.raises(ValueError, match="smaller than"):
        patches(np.zeros((1, 3, 3, 3), np.uint8), grid=4)
    with pytest.raises(ValueError, match="grid"):
        patches(img[None], grid=0)


def test_input_forms_and_errors(photos):
    imgs, labels = photos
    u8 = segments(imgs[:1], n_segments=(10,))
    fl = segments(imgs[:1].astype(np.float64) / 255.0, n_segments=(10,))
    assert np.array_equal(u8.images, fl.images)
    grey, _ = load_digits_images(size=24, rgb=False, n_per_class=1)
    g = segments(grey, n_segments=(10,))
    assert g.images.shape[1:] == (24, 24, 3)
    mixed = [imgs[0], imgs[1][:80, :60]]
    with pytest.raises(ValueError, match="different sizes"):
        segments(mixed)
    assert segments(mixed, size=48, n_segments=(10,)).images.shape[1:] == (48, 48, 3)
    with pytest.raises(ValueError, match="channels-first"):
        segments(np.zeros((2, 3, 32, 32), np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        segments(imgs[:1].astype(np.float32) - 100.0)
    with pytest.raises(ValueError, match="one per image"):
        segments(imgs, labels[:2])
    with pytest.raises(ValueError, match="per_class needs labels"):
        segments(imgs, per_class=2)
    with pytest.raises(ValueError, match="min_area"):
        segments(imgs, min_area=2.0)
    with pytest.raises(ValueError, match="n_segments"):
        segments(imgs, n_segments=())
    with pytest.raises(TypeError, match="NumPy array"):
        as_image_list("not images")
    with pytest.raises(ValueError, match="empty"):
        as_image_list([])


def test_sample_matches_prototype_choice():
    import iis

    imgs, labels = load_digits_images(size=24)
    el = segments(imgs, labels, per_class=2, n_segments=(10,))
    sub = el.sample(30, seed=4)
    assert len(sub) == 30
    assert np.bincount(sub.labels, minlength=10).tolist() == [3] * 10
    # Prototype libraries built from all element embeddings pick the same elements.
    emb = np.random.default_rng(0).normal(size=(len(el), 5))
    lib = iis.ConceptLibrary.prototype(emb, el.labels, n_concepts=30, seed=4)
    chosen = np.asarray(lib.meta["element_index"])
    assert np.array_equal(el.images[chosen], sub.images)
    assert len(el.sample(10_000)) == len(el)
    assert "Elements(kind='segments'" in repr(el)


def test_show_montage(photos):
    import matplotlib

    matplotlib.use("Agg")
    el = segments(photos[0][:1], n_segments=(10,))
    ax = el.show(8)
    assert ax.get_title().startswith(f"{min(8, len(el))} of {len(el)}")


def test_datasets_helpers():
    imgs, labels = load_digits_images(size=16)
    assert imgs.shape == (1797, 16, 16, 3) and imgs.dtype == np.uint8 and labels.shape == (1797,)
    assert imgs.max() == 255 and imgs.min() == 0
    tr, ev = train_eval_split(labels, 0.25, seed=0)
    assert len(np.intersect1d(tr, ev)) == 0 and len(tr) + len(ev) == 1797
    frac = np.bincount(labels[ev], minlength=10) / np.bincount(labels, minlength=10)
    assert np.all(np.abs(frac - 0.25) < 0.02)
    assert np.array_equal(train_eval_split(labels, 0.25, seed=0)[1], ev)
    with pytest.raises(ValueError, match="eval_fraction"):
        train_eval_split(labels, 1.5)
    with pytest.raises(ValueError, match="size"):
        load_digits_images(size=4)
    with pytest.raises(ValueError, match="unknown photo"):
        load_photos(["nope"])


def test_embed_uses_same_model_and_layer():
    if os.environ.get("CI") or os.environ.get("IIS_REQUIRE_TORCH"):
        import torch
    else:  # pragma: no cover
        torch = pytest.importorskip("torch")
    import timm

    import iis.torch as it

    imgs, labels = load_digits_images(size=32, n_per_class=1)
    el = segments(imgs, labels, n_segments=(10,))
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    emb = it.embed_elements(el, model, size=32, progress=False)
    ds = it.ImageDataset(el.images, size=32)
    x = torch.stack([ds[i] for i in range(len(ds))])
    np.testing.assert_allclose(emb, it.extract_features(model, x, progress=False), atol=1e-5)
    emb3 = it.embed_elements(el, model, "layer3", size=32, progress=False)
    assert emb3.shape == (len(el), 256)
