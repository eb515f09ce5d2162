"""Synthetic short-axis cine phantom: the built-in dataset for demos and fast tests.

``make_phantom_subject`` draws one deterministic (by ``seed`` and ``index``) 4D cine
``image`` of shape (X, Y, Z, T) = (size, size, n_slices, n_frames), float32, with labels in
the internal convention (0 bg, 1 LV, 2 MYO, 3 RV) at ED (t=0) and ES. Per slice: a bright
LV blood pool disc, a dark myocardial ring around it, a bright RV crescent attached to the
ring on one side, body tissue with texture, air and a few distractor blobs. Slice 0 is the
base: the LV narrows toward the apex and the RV vanishes there. Over time the cavities
contract from ED (t=0) to ES (~0.35 T) while the myocardial area per slice is conserved
(so the wall thickens). Pathology sets the ejection fraction (NOR ~55-68 %, DCM dilated
with ~20-35 %, HCM thick wall with ~65-75 %). Vendors "A".."D" differ in intensity
scale, gamma, noise (Rician or Gaussian) and multiplicative bias field strength.

The ``phantom`` reader serves these subjects from a folder (optionally holding
``phantom.json``); ``write_phantom_dataset`` writes them as an nnU-Net style NIfTI folder
for the generic ``nifti`` reader.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
from scipy.ndimage import gaussian_filter

from ...atomic import write_bytes
from ...errors import DataError
from ..labels import LV, MYO, RV
from ..subject import Subject
from .base import READERS, Reader

VENDORS: dict[str, dict] = {  # intensity scale, gamma, noise std (of the 0..1 signal), noise kind, bias strength
    "A": dict(scale=1000.0, gamma=1.0, noise=0.03, rician=True, bias=0.25),
    "B": dict(scale=300.0, gamma=0.8, noise=0.05, rician=True, bias=0.35),
    "C": dict(scale=2500.0, gamma=1.3, noise=0.04, rician=False, bias=0.2),
    "D": dict(scale=150.0, gamma=1.1, noise=0.06, rician=True, bias=0.4),
}
PATHOLOGIES: dict[str, dict] = {  # LV radius at base (mm), ED wall thickness (mm), LV EF, extra RV contraction
    "NOR": dict(r_lv=(22.0, 27.0), wall=(7.0, 9.0), ef=(0.55, 0.68), rv_k=(0.1, 0.2)),
    "DCM": dict(r_lv=(28.0, 32.0), wall=(6.0, 7.5), ef=(0.20, 0.35), rv_k=(0.0, 0.08)),
    "HCM": dict(r_lv=(18.0, 22.0), wall=(13.0, 16.0), ef=(0.65, 0.75), rv_k=(0.05, 0.15)),
}
DEFAULTS = dict(n_subjects=12, n_unlabeled=2, seed=0, size=96, n_slices=8, n_frames=10)
_INT_KEYS = ("n_subjects", "n_unlabeled", "seed", "size", "n_slices", "n_frames")


def subject_name(index: int) -> str:
    return f"phantom{index:03d}"


def _affine(rng: np.random.Generator, shape: tuple[int, int, int], spacing) -> np.ndarray:
    """Oblique short-axis voxel->RAS affine; slice axis points base->apex ~(-1, +1, -1) (left-anterior-inferior).

    Columns are the voxel axes in mm (norms = spacing), right-handed; the in-plane axis i points roughly
    left-posterior, so the RV drawn toward -i (theta ~ pi) lies right-anterior of the LV, as in a real heart.
    """
    k = np.array([-1.0, 1.0, -1.0]) / np.sqrt(3.0) + rng.normal(0.0, 0.08, 3)
    k /= np.linalg.norm(k)
    i0 = np.cross([0.0, 0.0, 1.0], k)
    i0 /= np.linalg.norm(i0)
    j0 = np.cross(k, i0)  # (i0, j0, k) is right-handed
    phi = rng.uniform(-0.4, 0.4)
    i, j = np.cos(phi) * i0 + np.sin(phi) * j0, -np.sin(phi) * i0 + np.cos(phi) * j0
    aff = np.eye(4)
    aff[:3, :3] = np.stack([i, j, k], axis=1) * np.asarray(spacing, dtype=np.float64)
    heart_world = np.array([15.0, -10.0, 20.0]) + rng.normal(0.0, 10.0, 3)
    aff[:3, 3] = heart_world - aff[:3, :3] @ ((np.asarray(shape, dtype=np.float64) - 1) / 2)
    return aff


def _largest_per_plane(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 4-connected component of each (z, t) plane of an (X, Y, Z, T) mask (drops pixel slivers)."""
    xs, ys = np.flatnonzero(mask.any(axis=(1, 2, 3))), np.flatnonzero(mask.any(axis=(0, 2, 3)))
    if xs.size == 0:
        return mask
    box = (slice(xs[0], xs[-1] + 1), slice(ys[0], ys[-1] + 1))
    sub = mask[box].reshape(xs[-1] - xs[0] + 1, ys[-1] - ys[0] + 1, -1)  # (x, y, plane)
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[:, :, 1] = ndimage.generate_binary_structure(2, 1)  # no links between planes
    ids, n = ndimage.label(sub, structure=structure)
    sizes = np.bincount(ids.ravel())[1:]
    plane = np.array([o[2].start for o in ndimage.find_objects(ids)])
    order = np.lexsort((sizes, plane))  # by plane, then size: the last of each plane is its largest
    last = np.r_[plane[order][1:] != plane[order][:-1], True]
    keep = np.zeros(n + 1, dtype=bool)
    keep[order[last] + 1] = True
    out = np.zeros_like(mask)
    out[box] = keep[ids].reshape(mask[box].shape)
    return out


def make_phantom_subject(
    index: int,
    seed: int = 0,
    size: int = 96,
    n_slices: int = 8,
    n_frames: int = 10,
    spacing=(1.5, 1.5, 8.0),
    labeled: bool = True,
    vendor: str | None = None,
    pathology: str | None = None,
    every_frame: bool = False,
) -> Subject:
    """One synthetic subject: image (size, size, n_slices, n_frames) float32, labels {ed: .., es: ..} (uint8).

    ``every_frame``: label maps for every frame of the cycle, not only ED and ES (ground truth for
    full-cycle analysis). Deterministic in (seed, index). ``vendor`` defaults to "ABCD"[index % 4], ``pathology``
    to ("NOR", "DCM", "HCM")[index % 3]. ``extra`` holds the drawing parameters
    (e.g. ``ef_target``, ``rv_angle``).
    """
    if size < 32 or n_slices < 2 or n_frames < 2 or index < 0:
        raise ValueError(f"phantom needs size >= 32, n_slices >= 2, n_frames >= 2, index >= 0; got "
                         f"size={size}, n_slices={n_slices}, n_frames={n_frames}, index={index}")
    vendor = vendor or "ABCD"[index % 4]
    pathology = pathology or ("NOR", "DCM", "HCM")[index % 3]
    if vendor not in VENDORS or pathology not in PATHOLOGIES:
        raise ValueError(f"unknown vendor {vendor!r} or pathology {pathology!r}; "
                         f"known {sorted(VENDORS)} / {sorted(PATHOLOGIES)}")
    v, p = VENDORS[vendor], PATHOLOGIES[pathology]
    sx, sy, sz = (float(s) for s in spacing)
    rng = np.random.default_rng([int(seed), int(index)])
    fov = size * min(sx, sy)

    # ---- per-subject anatomy ----
    r_lv0 = rng.uniform(*p["r_lv"]) * fov / 144.0  # 144 mm = default field of view
    wall0 = rng.uniform(*p["wall"]) * fov / 144.0
    ef = rng.uniform(*p["ef"])
    k_lv = 1.0 - np.sqrt(1.0 - ef)  # radius shrink at ES: area (and volume) factor (1 - k)^2 = 1 - EF
    k_rv = rng.uniform(*p["rv_k"])  # RV shrink on top of following the septum
    theta = np.pi + rng.uniform(-0.6, 0.6)  # RV direction in the (x, y) plane
    es = int(np.clip(round(n_frames * rng.uniform(0.3, 0.4)), 1, n_frames - 1))
    centre = np.array([size * sx, size * sy]) / 2 + rng.uniform(-0.08, 0.08, 2) * fov
    tilt = rng.uniform(-4.0, 4.0, 2)  # mm shift of the LV centre from base to apex
    rv_a, rv_b, rv_h = rng.uniform(0.75, 0.95), rng.uniform(1.15, 1.4), rng.uniform(0.4, 0.55)

    # ---- label maps, (X, Y, Z, T): 3D (X, Y, Z, 1) geometry against (1, 1, Z, T) radii, in mm ----
    f32 = np.float32
    s = np.linspace(0.0, 1.0, n_slices)[None, None, :, None]  # base (0) -> apex (1)
    t = np.arange(n_frames)
    c = np.where(t <= es, 0.5 * (1 - np.cos(np.pi * t / es)),  # contraction 0 at ED, 1 at ES
                 0.5 * (1 + np.cos(np.pi * (t - es) / (n_frames - es))))[None, None, None, :]
    x = ((np.arange(size) + 0.5) * sx)[:, None, None, None]
    y = ((np.arange(size) + 0.5) * sy)[None, :, None, None]
    dx = (x - (centre[0] + tilt[0] * s)).astype(f32)  # (X, 1, Z, 1)
    dy = (y - (centre[1] + tilt[1] * s)).astype(f32)  # (1, Y, Z, 1)
    dist2 = dx**2 + dy**2
    r_lv_ed = r_lv0 * np.sqrt(1.0 - (s / 1.15) ** 2)
    r_out_ed = r_lv_ed + wall0 * (1.0 - 0.25 * s)
    r_lv = r_lv_ed * (1.0 - k_lv * c)
    r_out2 = r_lv**2 + r_out_ed**2 - r_lv_ed**2  # myocardial area conserved -> the wall thickens at ES
    rv_size = np.sqrt(np.clip(1.0 - s / 0.92, 0.0, 1.0)) * (1.0 - k_rv * c)  # vanishes toward the apex
    # RV: ellipse along theta minus the epicardial disc; semi-axes rv_a, rv_b (x r_out * rv_size), reaching
    # rv_h * r_out * rv_size beyond the epicardium; it follows the septum as the LV contracts
    r_out = np.sqrt(r_out2)
    du = (dx * f32(np.cos(theta)) + dy * f32(np.sin(theta))) - (r_out * (1.0 + (rv_h - rv_a) * rv_size)).astype(f32)
    dw = dy * f32(np.cos(theta)) - dx * f32(np.sin(theta))
    q = du * du * f32((rv_b / rv_a) ** 2) + dw * dw
    epi = dist2 < r_out2.astype(f32)
    label = np.where(epi, np.uint8(MYO), np.uint8(0))
    label[dist2 < (r_lv**2).astype(f32)] = LV
    label[_largest_per_plane((q < ((rv_b * r_out * rv_size) ** 2).astype(f32)) & ~epi)] = RV

    # ---- intensities (0..1 before vendor contrast) ----
    xy = np.stack(np.meshgrid((np.arange(size) + 0.5) * sx - size * sx / 2,
                              (np.arange(size) + 0.5) * sy - size * sy / 2, indexing="ij"))
    body_rot = rng.uniform(-0.3, 0.3)
    bx = xy[0] * np.cos(body_rot) + xy[1] * np.sin(body_rot)
    by = -xy[0] * np.sin(body_rot) + xy[1] * np.cos(body_rot)
    body = ((bx / (fov * rng.uniform(0.44, 0.52))) ** 2 + (by / (fov * rng.uniform(0.36, 0.44))) ** 2) < 1.0
    texture = rng.standard_normal((size, size, n_slices), dtype=f32)
    texture = gaussian_filter(texture, sigma=(3.0, 3.0, 0.5), truncate=2.5)
    background = np.where(body[:, :, None], 0.35 + texture * (0.06 / (texture.std() + 1e-8)), 0.02)  # (X, Y, Z)
    zz = ((np.arange(n_slices) + 0.5) * sz)[None, None, :]
    r_heart = r_lv0 + wall0
    for _ in range(int(rng.integers(3, 6))):  # distractor blobs placed outside the heart (base slice, ED)
        sig = rng.uniform(3.0, 7.0) * fov / 144.0
        for _try in range(50):
            bc = rng.uniform(0.1, 0.9, 2) * np.array([size * sx, size * sy])
            d = bc - centre
            bu = (d[0] * np.cos(theta) + d[1] * np.sin(theta) - r_heart * (1 + rv_h - rv_a)) / (rv_a * r_heart)
            bw = (-d[0] * np.sin(theta) + d[1] * np.cos(theta)) / (rv_b * r_heart)
            if np.hypot(*d) > r_heart + 1.5 * sig and np.hypot(bu, bw) > 1 + 1.5 * sig / (rv_a * r_heart):
                break
        bz = rng.uniform(0, n_slices * sz)
        g = (np.exp(-((x[..., 0] - bc[0]) ** 2) / (2 * sig**2)) * np.exp(-((y[..., 0] - bc[1]) ** 2) / (2 * sig**2))
             * np.exp(-((zz - bz) ** 2) / (2 * (3 * sig) ** 2)))  # separable Gaussian, (X, Y, Z)
        background += rng.choice([-0.3, 0.45, 0.65]) * g * body[:, :, None]
    # vendor gamma acts on the clean levels (before the blur: cheaper, and the same up to partial-volume edges)
    gamma = v["gamma"]
    lut = np.array([0.0, 0.9, 0.22, 0.85], dtype=f32) ** f32(gamma)  # bg (replaced), LV, MYO, RV levels
    background = (np.clip(background, 0.0, None) ** gamma).astype(f32)
    img = np.where(label == 0, background[..., None], lut[label])
    img = gaussian_filter(img, sigma=(0.7, 0.7, 0.0, 0.0))  # partial volume

    # ---- vendor: smooth multiplicative bias field, intensity scale, Rician or Gaussian noise ----
    gx, gy = xy / fov
    gz = np.linspace(-0.5, 0.5, n_slices)[None, None, :]
    coef = rng.normal(0.0, 1.0, 6)
    logb = (coef[0] * gx + coef[1] * gy + coef[2] * gx * gy + coef[3] * gx**2 + coef[4] * gy**2)[..., None]
    logb = logb + coef[5] * gz
    gain = np.exp(gamma * v["bias"] * logb / (np.abs(logb).max() + 1e-8)) * v["scale"]  # (X, Y, Z)
    img *= gain.astype(f32)[..., None]
    sd = f32(v["noise"] * v["scale"])
    noise = rng.standard_normal(img.shape, dtype=f32)
    noise *= sd
    img += noise
    if v["rician"]:  # magnitude of a complex signal with Gaussian noise in both channels
        noise = rng.standard_normal(img.shape, dtype=f32)
        noise *= sd
        image = np.hypot(img, noise, out=img)
    else:
        image = np.clip(img, 0.0, None, out=img)

    frames = range(n_frames) if every_frame else (0, es)
    labels = {t: label[..., t].copy() for t in frames} if labeled else {}
    return Subject(
        subject_id=subject_name(index), dataset="phantom", image=image, spacing=(sx, sy, sz),
        affine=_affine(rng, (size, size, n_slices), (sx, sy, sz)), labels=labels, ed_frame=0, es_frame=es,
        vendor=vendor, centre=f"phantom-{vendor}", pathology=pathology, source=f"phantom(seed={seed}, index={index})",
        extra=dict(seed=int(seed), index=int(index), ef_target=float(ef), rv_angle=float(theta),
                   frame_ms=round(900.0 / n_frames, 3)),
    )


def check_phantom_config(given: dict, path: Path | None = None) -> dict:
    """Validate a phantom config (keys of ``DEFAULTS`` and ``spacing``) -> merged over ``DEFAULTS``.

    Raises ``DataError`` naming ``path`` (the phantom.json) and the problem.
    """
    if not isinstance(given, dict):
        raise DataError(path, "phantom config must be a JSON object")
    unknown = sorted(set(given) - set(_INT_KEYS) - {"spacing"})
    if unknown:
        raise DataError(path, f"unknown keys {unknown}; known: {sorted(_INT_KEYS + ('spacing',))}")
    for key in _INT_KEYS:
        if key in given and (not isinstance(given[key], int) or isinstance(given[key], bool) or given[key] < 0):
            raise DataError(path, f"{key!r} must be a non-negative integer, got {given[key]!r}")
    if "spacing" in given:
        sp = given["spacing"]
        if not (isinstance(sp, (list, tuple)) and len(sp) == 3
                and all(isinstance(a, (int, float)) and not isinstance(a, bool) and a > 0 for a in sp)):
            raise DataError(path, f"'spacing' must be 3 positive numbers, got {sp!r}")
    cfg = {**DEFAULTS, **given}
    if not 1 <= cfg["n_subjects"] or cfg["n_unlabeled"] > cfg["n_subjects"]:
        raise DataError(path, f"need n_subjects >= 1 and n_unlabeled <= n_subjects, got {cfg}")
    if cfg["size"] < 32 or cfg["n_slices"] < 2 or cfg["n_frames"] < 2:
        raise DataError(path, f"need size >= 32, n_slices >= 2, n_frames >= 2, got {cfg}")
    return cfg


def read_phantom_config(root: Path) -> dict:
    """``root/phantom.json`` merged over ``DEFAULTS`` (``DEFAULTS`` if absent); a bad file raises ``DataError``."""
    path = Path(root) / "phantom.json"
    if not path.is_file():
        return dict(DEFAULTS)
    try:
        given = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(path, f"cannot read phantom config JSON: {e}") from None
    return check_phantom_config(given, path)


def _subject_kwargs(cfg: dict) -> dict:
    kw = {k: cfg[k] for k in ("size", "n_slices", "n_frames") if k in cfg}
    if "spacing" in cfg:
        kw["spacing"] = tuple(float(a) for a in cfg["spacing"])
    return kw


@READERS.register("phantom")
class PhantomReader(Reader):
    """Synthetic subjects ``phantom000``...; the last ``n_unlabeled`` have no labels."""

    name = "phantom"
    description = "synthetic short-axis cine phantom (folder with optional phantom.json)"

    def subject_ids(self, root: Path) -> list[str]:
        root = Path(root)
        if not root.is_dir():
            raise DataError(root, "is not a folder (the phantom reader needs a folder, optionally with phantom.json)")
        return [subject_name(i) for i in range(read_phantom_config(root)["n_subjects"])]

    def load(self, root: Path, subject_id: str) -> Subject:
        root = Path(root)
        cfg = read_phantom_config(root)
        ids = self.subject_ids(root)
        if subject_id not in ids:
            raise DataError(root, f"no phantom subject {subject_id!r}; this folder has {ids[0]}..{ids[-1]}")
        index = ids.index(subject_id)
        labeled = index < cfg["n_subjects"] - cfg["n_unlabeled"]
        subj = make_phantom_subject(index, seed=cfg["seed"], labeled=labeled, **_subject_kwargs(cfg))
        subj.source = str(root)
        return subj


def _write_nifti(path: Path, data: np.ndarray, affine: np.ndarray, zooms: tuple[float, ...]) -> None:
    img = nib.Nifti1Image(data, affine)
    img.header.set_zooms(zooms)
    img.header.set_xyzt_units("mm", "msec")
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=1, mtime=0) as gz:
        gz.write(img.to_bytes())
    write_bytes(path, buf.getvalue())


def write_phantom_dataset(out: str | Path, n_subjects: int = 12, n_unlabeled: int = 2, seed: int = 0, **kw) -> Path:
    """Write phantoms as an nnU-Net style folder for the ``nifti`` reader; returns ``out``.

    ``imagesTr/phantomNNN_0000.nii.gz`` (X, Y, Z, T) float32 + ``labelsTr/phantomNNN.nii.gz``
    (X, Y, Z, T) uint8, zero except at ED and ES, for the first ``n_subjects - n_unlabeled``
    subjects; ``imagesTs/`` for the rest; ``dataset.json``; ``metadata.csv``
    (subject, vendor, centre, pathology, ed_frame, es_frame). ``kw`` goes to ``make_phantom_subject``.
    """
    if not 0 <= n_unlabeled <= n_subjects or n_subjects < 1:
        raise ValueError(f"need n_subjects >= 1 and 0 <= n_unlabeled <= n_subjects, got {n_subjects}, {n_unlabeled}")
    out = Path(out)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    n_labeled, rows = n_subjects - n_unlabeled, []
    for i in range(n_subjects):
        subj = make_phantom_subject(i, seed=seed, labeled=i < n_labeled, **kw)
        zooms = (*subj.spacing, subj.extra["frame_ms"])
        folder = "imagesTr" if subj.is_labeled else "imagesTs"
        _write_nifti(out / folder / f"{subj.subject_id}_0000.nii.gz", subj.image, subj.affine, zooms)
        if subj.is_labeled:
            lab = np.zeros(subj.image.shape, dtype=np.uint8)
            for t, m in subj.labels.items():
                lab[..., t] = m
            _write_nifti(out / "labelsTr" / f"{subj.subject_id}.nii.gz", lab, subj.affine, zooms)
        rows.append([subj.subject_id, subj.vendor, subj.centre, subj.pathology, subj.ed_frame, subj.es_frame])
    meta = {"labels": {"background": 0, "LV": 1, "MYO": 2, "RV": 3}, "channel_names": {"0": "cineMRI"},
            "file_ending": ".nii.gz", "numTraining": n_labeled, "name": "phantom",
            "description": "cardiossp synthetic short-axis cine phantom; labels 1 LV, 2 MYO, 3 RV"}
    write_bytes(out / "dataset.json", json.dumps(meta, indent=2).encode())
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["subject", "vendor", "centre", "pathology", "ed_frame", "es_frame"])
    writer.writerows(rows)
    write_bytes(out / "metadata.csv", buf.getvalue().encode())
    return out


def write_phantom_config(out: str | Path, **kw) -> Path:
    """Write ``out/phantom.json`` (keys of ``DEFAULTS`` and ``spacing``) for the ``phantom`` reader; returns ``out``.

    A bad value raises ``DataError`` before anything is written.
    """
    if "spacing" in kw:
        kw["spacing"] = [float(a) for a in kw["spacing"]]
    out = Path(out)
    cfg = check_phantom_config(kw, out / "phantom.json")
    out.mkdir(parents=True, exist_ok=True)
    write_bytes(out / "phantom.json", json.dumps(cfg, indent=2).encode())
    return out
