"""Device-side augmentation: parameters, geometry, intensities, seeding, and agreement with batchgeneratorsv2."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform

from cardiossp.data.augment import AdditiveBrightnessTransform, build_transforms
from cardiossp.data.batch_augment import (
    N_PARAMS,
    PARAM_NAMES,
    SeededParams,
    apply_batch,
    draw_params,
    identity_params,
)
from cardiossp.errors import ConfigError
from cardiossp.train.sampling import SeededItems

I = {n: i for i, n in enumerate(PARAM_NAMES)}  # noqa: E741
S, PATCH = 96, (64, 64)


def _params(**values) -> np.ndarray:
    p = identity_params()
    for k, v in values.items():
        p[I[k]] = v
    return p


def _shape_sample(size=S):
    """An asymmetric L (label 1) with a bar (label 2) off the centre, on a faintly textured background."""
    g = torch.Generator().manual_seed(3)
    image = 0.05 * torch.rand(1, size, size, generator=g)
    seg = torch.zeros(1, size, size, dtype=torch.int64)
    seg[0, 25:55, 35:45] = 1
    seg[0, 25:33, 45:70] = 1
    seg[0, 58:64, 40:60] = 2
    image[seg == 1] += 1.0
    image[seg == 2] += 2.0
    return image, seg


def _dice(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean Dice over the foreground labels."""
    ds = []
    for lab in (1, 2):
        x, y = a == lab, b == lab
        ds.append(2 * (x & y).sum().item() / max(1, x.sum().item() + y.sum().item()))
    return float(np.mean(ds))


def _bgv2_spatial(image, seg, patch, rotation=0.0, scale=1.0, shift=None, seed=0):
    """batchgeneratorsv2 SpatialTransform at a fixed rotation / scale (centre from a random crop if
    ``shift`` is the max translation), returning its output and the centre it used."""
    if shift is None:
        kw = dict(patch_center_dist_from_border=0, random_crop=False)
    else:
        kw = dict(patch_center_dist_from_border=[s / 2 - t for s, t in zip(image.shape[1:], shift)],
                  random_crop=True)
    st = SpatialTransform(patch, p_rotation=1, rotation=rotation, p_scaling=1, scaling=scale,
                          p_synchronize_scaling_across_axes=1, mode_image="bicubic", mode_seg="nearest", **kw)
    np.random.seed(seed)
    prm = st.get_parameters(image=image)
    return st._apply_to_image(image.clone(), **prm), st._apply_to_segmentation(seg.clone(), **prm), \
        prm["center_location_in_pixels"]


def _ours(p, image, seg, patch=PATCH, **kw):
    img, lab = apply_batch(torch.from_numpy(np.asarray(p))[None], image[None], seg[None], patch, **kw)
    return img[0], lab[0]


# ---------------------------------------------------------------- parameters


def test_param_vector_and_unknown_presets():
    p = draw_params("paper", np.random.default_rng(0), 128, 160)
    assert p.shape == (N_PARAMS,) == (len(PARAM_NAMES),) and p.dtype == np.float32
    assert np.array_equal(draw_params("none", np.random.default_rng(0), 128, 160), identity_params())
    with pytest.raises(ConfigError, match="not yet on the device"):
        draw_params("nnunet", np.random.default_rng(0), 128, 160)
    with pytest.raises(ConfigError, match="not yet on the device"):
        SeededParams("nnunet", 128)
    with pytest.raises(ConfigError, match="unknown"):
        draw_params("heavy", np.random.default_rng(0), 128, 160)
    with pytest.raises(ConfigError, match="patch_size"):
        draw_params("paper", np.random.default_rng(0), (128,), 160)


def test_paper_ranges_and_probabilities_over_5000_draws():
    patch = (128, 96)
    rng = np.random.default_rng(123)
    n = 5000
    p = np.stack([draw_params("paper", rng, patch, 160) for _ in range(n)])
    t_y, t_x = 128 * 40 / 256, 96 * 40 / 256
    ranges = {"rotation": (-math.pi, math.pi), "scale": (0.7, 1.4), "shift_y": (-t_y, t_y), "shift_x": (-t_x, t_x),
              "noise_std": (0, 0.2), "blur_sigma_y": (0.5, 1.5), "blur_sigma_x": (0.5, 1.5),
              "multiplier": (0.6, 1.5), "additive": (-0.4, 0.4), "gamma": (0.7, 1.5)}
    for name, (lo, hi) in ranges.items():
        v = p[:, I[name]]
        eps = 1e-6 * max(1, abs(lo), abs(hi))  # float32 rounding of the bounds
        assert v.min() >= lo - eps and v.max() <= hi + eps, name
        width = hi - lo
        assert v.min() < lo + 0.01 * width and v.max() > hi - 0.01 * width, f"{name} does not fill its range"
        # uniform: mean and variance within ~4 sigma of U(lo, hi)
        assert abs(v.mean() - (lo + hi) / 2) < 4 * width / math.sqrt(12 * n), name
        assert abs(v.var() / (width**2 / 12) - 1) < 0.06, name
    for name, prob in {"flip_y": 0.5, "flip_x": 0.5, "noise": 0.2, "blur": 0.2}.items():
        v = p[:, I[name]]
        assert set(np.unique(v)) <= {0.0, 1.0}
        assert abs(v.mean() - prob) < 3 * math.sqrt(prob * (1 - prob) / n), f"{name}: {v.mean()}"
    # flips independent of each other (both ~0.25)
    both = (p[:, I["flip_y"]] * p[:, I["flip_x"]]).mean()
    assert abs(both - 0.25) < 3 * math.sqrt(0.25 * 0.75 / n)
    seeds = p[:, I["noise_seed"]]
    assert np.all(seeds == np.floor(seeds)) and seeds.min() >= 0 and seeds.max() < 2**24
    assert len(np.unique(seeds)) > n - 5


# ---------------------------------------------------------------- worker transform and seeding


def test_seeded_params_keeps_the_slice_and_is_picklable():
    image, seg = _shape_sample()
    image_np = image.numpy().astype(np.float64)
    image_np.setflags(write=False)  # like a memory map
    sp = pickle.loads(pickle.dumps(SeededParams("paper", PATCH)))
    out = sp({"image": image_np, "segmentation": seg.int().numpy(), "path": "x", "aug_seed": 7})
    assert out["image"].dtype == torch.float32 and out["image"].shape == (1, S, S)
    assert torch.equal(out["image"], image)
    assert out["segmentation"].dtype == torch.int64 and torch.equal(out["segmentation"], seg)
    assert out["path"] == "x"
    assert out["aug_params"].shape == (N_PARAMS,) and out["aug_params"].dtype == torch.float32
    assert np.array_equal(out["aug_params"].numpy(),
                          draw_params("paper", np.random.default_rng(7), PATCH, S))
    unlabeled = sp({"image": image})
    assert "segmentation" not in unlabeled and unlabeled["aug_params"].shape == (N_PARAMS,)


class _Slices(torch.utils.data.Dataset):
    def __init__(self, n=6):
        self.items = [_shape_sample() for _ in range(n)]
        self.transform = SeededParams("paper", PATCH)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        image, seg = self.items[i]
        return self.transform({"image": image, "segmentation": seg})


def _batch(ds, keys):
    items = [ds[k] for k in keys]
    return {k: torch.stack([it[k] for it in items]) for k in ("image", "segmentation", "aug_params")}


def test_same_item_seeds_give_the_same_batch_and_other_seeds_another():
    ds = SeededItems(_Slices())
    keys = [(0, 11), (1, 12), (2, 13), (3, 14)]
    np.random.seed(999)  # global state between items must not matter: SeededItems reseeds
    a = _batch(ds, keys)
    np.random.seed(5)
    torch.manual_seed(5)
    b = _batch(ds, keys)
    c = _batch(ds, [(0, 21), (1, 22), (2, 23), (3, 24)])
    assert torch.equal(a["aug_params"], b["aug_params"])
    assert not torch.equal(a["aug_params"], c["aug_params"])
    # force noise on so the noise path is covered too
    for batch in (a, b, c):
        batch["aug_params"][:, I["noise"]] = 1
    run = {}
    for name, batch in {"a": a, "b": b, "c": c}.items():
        run[name] = apply_batch(batch["aug_params"], batch["image"], batch["segmentation"], PATCH)
        gen = torch.Generator().manual_seed(42)
        run[name + "g"] = apply_batch(batch["aug_params"], batch["image"], batch["segmentation"], PATCH,
                                      generator=gen)
    for x in ("", "g"):
        assert torch.equal(run["a" + x][0], run["b" + x][0]) and torch.equal(run["a" + x][1], run["b" + x][1])
        assert not torch.allclose(run["a" + x][0], run["c" + x][0])
    # the generator decides the noise: another generator seed, another image, same labels
    other = apply_batch(a["aug_params"], a["image"], a["segmentation"], PATCH,
                        generator=torch.Generator().manual_seed(43))
    assert not torch.allclose(other[0], run["ag"][0]) and torch.equal(other[1], run["ag"][1])
    # per-item noise seeds: an item's result does not depend on its batch-mates
    alone = apply_batch(a["aug_params"][1:2], a["image"][1:2], a["segmentation"][1:2], PATCH)
    assert torch.allclose(alone[0], run["a"][0][1:2], atol=1e-5) and torch.equal(alone[1], run["a"][1][1:2])


# ---------------------------------------------------------------- geometry


def test_labeled_square_moves_with_the_image_under_random_transforms():
    rng = np.random.default_rng(0)
    labels = {0, 1, 3}
    for trial in range(40):
        image = torch.zeros(1, S, S)
        seg = torch.zeros(1, S, S, dtype=torch.int64)
        r0, c0 = rng.integers(36, 46, size=2)
        image[0, r0:r0 + 14, c0:c0 + 12] = 1.0
        seg[0, r0:r0 + 14, c0:c0 + 12] = 3
        seg[0, 5:15, 5:90] = 1  # a second label elsewhere (may leave the patch)
        p = draw_params("paper", rng, PATCH, S)
        p[[I["noise"], I["blur"]]] = 0  # intensity changes would move the image-weighted centroid
        p[I["multiplier"]], p[I["additive"]], p[I["gamma"]] = 1, 0, 1
        img, lab = _ours(p, image, seg)
        assert set(torch.unique(lab).tolist()) <= labels
        mask = lab[0] == 3
        assert mask.sum() > 50, f"trial {trial}: square left the patch"
        rr, cc = torch.meshgrid(torch.arange(PATCH[0]), torch.arange(PATCH[1]), indexing="ij")
        w = img[0].clamp(min=0)
        img_c = torch.stack([(w * rr).sum(), (w * cc).sum()]) / w.sum()
        lab_c = torch.stack([rr[mask].float().mean(), cc[mask].float().mean()])
        assert torch.dist(img_c, lab_c) < 1.5, f"trial {trial}: {img_c} vs {lab_c}"


def test_none_preset_is_an_exact_centre_crop_as_batchgeneratorsv2():
    g = torch.Generator().manual_seed(0)
    for size, patch in [((96, 96), (64, 64)), ((97, 95), (64, 48)), ((96, 96), (63, 65)), ((50, 60), (64, 64))]:
        image = torch.randn(3, 1, *size, generator=g)
        seg = torch.randint(0, 4, (3, 1, *size), generator=g)
        params = torch.from_numpy(np.stack([draw_params("none", np.random.default_rng(i), patch, size)
                                            for i in range(3)]))
        img, lab = apply_batch(params, image, seg, patch)
        assert img.shape == (3, 1, *patch) and lab.dtype == torch.int64
        ref = build_transforms("none", patch)
        for i in range(3):
            want = ref({"image": image[i], "segmentation": seg[i]})
            assert torch.equal(img[i], want["image"]) and torch.equal(lab[i], want["segmentation"])
    # the plain slice for an even size
    image = torch.randn(2, 1, 96, 96, generator=g)
    img, lab = apply_batch(torch.from_numpy(np.stack([identity_params()] * 2)), image, None, (64, 64))
    assert lab is None and torch.equal(img, image[:, :, 16:80, 16:80])


def test_mixed_identity_and_transformed_items_in_one_batch():
    image, seg = _shape_sample()
    p = np.stack([identity_params(), _params(rotation=0.5)])
    img, lab = apply_batch(torch.from_numpy(p), image[None].repeat(2, 1, 1, 1), seg[None].repeat(2, 1, 1, 1), PATCH)
    assert torch.equal(img[0, 0], image[0, 16:80, 16:80]) and torch.equal(lab[0, 0], seg[0, 16:80, 16:80])
    assert not torch.equal(img[1], img[0])


@pytest.mark.parametrize("case", ["rotation+30", "scale1.3", "scale0.75", "translation", "all"])
def test_spatial_matches_batchgeneratorsv2(case):
    image, seg = _shape_sample()
    patch = (64, 72)
    rot = {"rotation+30": math.radians(30), "all": 2.0}.get(case, 0.0)
    scale = {"scale1.3": 1.3, "scale0.75": 0.75, "all": 1.2}.get(case, 1.0)
    shift = (10, 7) if case in ("translation", "all") else None
    ref_img, ref_seg, centre = _bgv2_spatial(image, seg, patch, rot, scale, shift, seed=4)
    p = _params(rotation=rot, scale=scale, shift_y=centre[0] - S / 2, shift_x=centre[1] - S / 2)
    img, lab = _ours(p, image, seg, patch)
    assert _dice(lab, ref_seg) > 0.9
    assert (lab != ref_seg).float().mean() < 0.002
    assert (img - ref_img).abs().max() < 1e-3
    if case == "rotation+30":  # the test can tell the direction: the opposite rotation does not match
        assert _dice(_ours(_params(rotation=-rot), image, seg, patch)[1], ref_seg) < 0.9
    if case == "scale1.3":  # ... and the meaning of scale
        assert _dice(_ours(_params(scale=1 / scale), image, seg, patch)[1], ref_seg) < 0.9


@pytest.mark.parametrize("axes", [(0,), (1,), (0, 1)])
def test_flips_match_batchgeneratorsv2_mirror_after_the_spatial_transform(axes):
    image, seg = _shape_sample()
    rot = 0.4
    ref_img, ref_seg, _ = _bgv2_spatial(image, seg, PATCH, rot, 1.1)
    mirror = MirrorTransform(allowed_axes=(0, 1))
    ref = mirror.apply({"image": ref_img, "segmentation": ref_seg}, axes=list(axes))
    p = _params(rotation=rot, scale=1.1, flip_y=float(0 in axes), flip_x=float(1 in axes))
    img, lab = _ours(p, image, seg)
    assert _dice(lab, ref["segmentation"]) > 0.9 and (lab != ref["segmentation"]).float().mean() < 0.002
    assert (img - ref["image"]).abs().max() < 1e-3
    unflipped, _ = _ours(_params(rotation=rot, scale=1.1), image, seg)
    assert (unflipped - ref["image"]).abs().max() > 0.5  # the flip matters for this shape


# ---------------------------------------------------------------- intensities


def test_brightness_shift_and_gamma_equal_batchgeneratorsv2():
    g = torch.Generator().manual_seed(1)
    image = torch.randn(1, 64, 64, generator=g) * 2 + 0.5
    for mult, add, gamma in [(1.3, -0.2, 0.8), (0.6, 0.4, 1.5), (1.0, 0.0, 1.2)]:
        ref = {"image": image.clone()}
        for t in (MultiplicativeBrightnessTransform(multiplier_range=mult, synchronize_channels=True),
                  AdditiveBrightnessTransform(shift_range=add),
                  GammaTransform(gamma=gamma, p_invert_image=0, synchronize_channels=True, p_per_channel=1,
                                 p_retain_stats=0)):
            ref = t(**ref)
        img, _ = apply_batch(torch.from_numpy(_params(multiplier=mult, additive=add, gamma=gamma))[None],
                             image[None], None, (64, 64))
        assert (img[0] - ref["image"]).abs().max() < 1e-5
        assert img[0].min() == pytest.approx(ref["image"].min().item(), abs=1e-6)  # range preserved


def test_blur_equals_batchgeneratorsv2_per_axis():
    g = torch.Generator().manual_seed(2)
    image = torch.randn(2, 1, 64, 64, generator=g)
    sig = [(0.5, 1.5), (1.2, 0.7)]
    p = np.stack([_params(blur=1, blur_sigma_y=a, blur_sigma_x=b) for a, b in sig])
    p[1, I["blur"]] = 1
    img, _ = apply_batch(torch.from_numpy(p), image, None, (64, 64))
    for i, (sy, sx) in enumerate(sig):
        draws = iter([sy, sx])
        t = GaussianBlurTransform(blur_sigma=lambda *a, **k: next(draws), synchronize_channels=True,  # noqa: B023
                                  synchronize_axes=False, p_per_channel=1)
        ref = t(image=image[i].clone())["image"]
        assert (img[i] - ref).abs().max() < 1e-5
        assert (img[i] - image[i]).abs().max() > 0.1
    # an item without blur in the same batch stays as it was
    p[1, I["blur"]] = 0
    img, _ = apply_batch(torch.from_numpy(p), image, None, (64, 64))
    assert torch.equal(img[1], image[1])


def test_noise_has_the_drawn_std_and_only_where_drawn():
    image = torch.zeros(4, 1, 128, 128)
    p = np.stack([_params(noise=1, noise_std=0.15), _params(noise=0, noise_std=0.15),
                  _params(noise=1, noise_std=0.05), identity_params()])
    img, _ = apply_batch(torch.from_numpy(p), image, None, (128, 128), generator=torch.Generator().manual_seed(0))
    assert img[0].std().item() == pytest.approx(0.15, rel=0.03)
    assert img[2].std().item() == pytest.approx(0.05, rel=0.03)
    assert torch.equal(img[1], image[1]) and torch.equal(img[3], image[3])


# ---------------------------------------------------------------- deep supervision, dtypes


def test_deep_supervision_targets_match_batchgeneratorsv2():
    image, seg = _shape_sample()
    ds = [[1, 1], [0.5, 0.5], [0.25, 0.25]]
    params = torch.from_numpy(np.stack([draw_params("paper", np.random.default_rng(i), PATCH, S) for i in range(3)]))
    img, targets = apply_batch(params, image[None].repeat(3, 1, 1, 1).double(), seg[None].repeat(3, 1, 1, 1).int(),
                               PATCH, deep_supervision_scales=ds)
    assert img.dtype == torch.float32 and img.shape == (3, 1, 64, 64)
    assert [tuple(t.shape) for t in targets] == [(3, 1, 64, 64), (3, 1, 32, 32), (3, 1, 16, 16)]
    assert all(t.dtype == torch.int64 for t in targets)
    down = DownsampleSegForDSTransform(ds_scales=ds)
    for i in range(3):
        ref = down(segmentation=targets[0][i])["segmentation"]
        assert all(torch.equal(r, t[i]) for r, t in zip(ref, targets))
    _, none = apply_batch(params, image[None].repeat(3, 1, 1, 1), None, PATCH, deep_supervision_scales=ds)
    assert none is None
    with pytest.raises(ConfigError, match="scales"):
        apply_batch(params, image[None].repeat(3, 1, 1, 1), None, PATCH, deep_supervision_scales=[[2, 2]])
