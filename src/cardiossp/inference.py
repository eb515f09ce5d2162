"""Inference: load a segmentation checkpoint safely and predict label maps in native geometry.

``Segmenter`` wraps a trained 2D network (nnU-Net's PlainConvUNet, Isensee et al. 2021) with
the preprocessing of de Mooij et al. 2024 and its inverse:

    image (X, Y, Z[, T]) -> z-score over the whole input -> in-plane resample to the training
    cache's grid (``spacing`` mm, ``size`` px, crop/pad) -> (T*Z, 1, S, S) slices -> network
    (whole S x S slice, fully convolutional) -> softmax of the full-resolution output
    [-> mean over mirror flips of both in-plane axes, nnU-Net's test-time augmentation]
    -> back to the native grid -> arg-max -> labels (X, Y, Z[, T]) uint8
    [-> one 3D connected component per class, chosen to keep one heart: ``data.labels.keep_connected_heart``].

Labels use the internal convention 0 background, 1 LV, 2 MYO, 3 RV.
Files in, files out: ``cardiossp.predict.predict_files``. Finding and loading the checkpoint: ``cardiossp.checkpoints``.

Where the grid comes from: the checkpoint's own record (``checkpoint["cardiossp"]``,
``train.segmentation.model_record``, in every checkpoint trained since it existed, and in a
``cardiossp export --format cardiossp`` file), so a run folder or a model file works on any machine;
only for an older checkpoint without one, the run's training cache (``config.yaml`` -> ``cache.json``),
else a warning and 1.25 mm / 256 px.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoints import cache_grid, load_model, read_run_config, record_grid, run_folder
from .config import TrainConfig
from .data.labels import NUM_CLASSES, keep_connected_heart, task_num_classes
from .data.preprocess import Geometry, _resize, _uncrop, image_to_slices, make_geometry, probs_to_native, zscore
from .errors import ConfigError, DataError

DEFAULT_SPACING, DEFAULT_SIZE = 1.25, 256


# ---------------------------------------------------------------- the segmenter
def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto``: the first CUDA device when there is one, else the CPU; ``cpu`` / ``cuda`` / ``cuda:N`` as
    given (a CUDA device that is not there is a ConfigError)."""
    if isinstance(device, torch.device):
        return device
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA device on this machine; use cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {device!r}: choose auto, cpu or cuda[:N]") from None


class Segmenter:
    """A segmentation network plus the preprocessing grid it was trained on.

    ``spacing``/``size``: the training cache's in-plane grid (mm, px). The network sees the
    whole S x S slice; sizes not divisible by the network's stride product are padded.
    ``record``: the checkpoint's model record (``train.segmentation.model_record``), None for an old one.
    """

    def __init__(self, model: nn.Module, spacing: float = DEFAULT_SPACING, size: int = DEFAULT_SIZE,
                 device: str | torch.device = "cpu", tta: bool = False, largest_component: bool = False,
                 batch_size: int = 32, cfg: TrainConfig | None = None):
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        from .models import input_divisor, set_deep_supervision

        set_deep_supervision(model, False)  # nnU-Net infers with the full-resolution output only
        try:
            self.divisor = input_divisor(model)
        except (AttributeError, ConfigError):
            self.divisor = (1, 1)
        self.spacing, self.size = float(spacing), int(size)
        self.tta, self.largest_component, self.batch_size, self.cfg = tta, largest_component, int(batch_size), cfg
        self.checkpoint: Path | None = None
        self.record: dict | None = None
        self.num_classes = task_num_classes(cfg.data.task) if cfg is not None else NUM_CLASSES  # output channels

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu", tta: bool = False,
                        largest_component: bool = False, batch_size: int = 32,
                        spacing: float | None = None, size: int | None = None,
                        ema_teacher: bool = False) -> "Segmenter":
        """Load a run folder, a ``.ckpt`` or an exported model file (``cardiossp export --format cardiossp``);
        ``ema_teacher``: a mean-teacher / bcp run's EMA teacher instead of its student.

        The grid (unless ``spacing`` / ``size`` are given) is the checkpoint's record; for an old checkpoint
        without one, the run's training cache (``config.yaml`` -> ``cache.json``); without that too, a warning
        and 1.25 mm / 256 px."""
        cfg, _, model, ckpt, record = load_model(path, ema_teacher)
        grid = record_grid(record) if record is not None else None
        run = run_folder(ckpt)
        if grid is None and run is not None and (spacing is None or size is None):
            try:
                cache = read_run_config(run).get("cache")
            except ConfigError:
                cache = None
            grid = cache_grid(cache) if cache else None
        if grid is None and (spacing is None or size is None):
            warnings.warn(f"{ckpt}: training grid unknown (a checkpoint without a model record, and its run's "
                          f"config.yaml / training cache.json unavailable); using {DEFAULT_SPACING} mm / "
                          f"{DEFAULT_SIZE} px", stacklevel=2)
            grid = (DEFAULT_SPACING, DEFAULT_SIZE)
        sp = spacing if spacing is not None else grid[0]
        sz = size if size is not None else grid[1]
        seg = cls(model, sp, sz, device, tta, largest_component, batch_size, cfg)
        seg.checkpoint, seg.record = ckpt, record
        return seg

    # -- network
    def _autocast(self):
        if self.device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return nullcontext()

    def _softmax(self, x: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            out = self.model(x)
        logits = out[0] if isinstance(out, (list, tuple)) else out
        return torch.softmax(logits.float(), dim=1)

    @torch.inference_mode()
    def forward_slices(self, slices: np.ndarray | torch.Tensor, tta: bool | None = None) -> torch.Tensor:
        """(N, H, W) normalised slices -> (N, C, H, W) float32 class probabilities (CPU).

        With TTA, the mean of the softmax over the 4 mirrorings (none, x, y, both), each flipped back.
        """
        tta = self.tta if tta is None else tta
        x = torch.as_tensor(np.asarray(slices, dtype=np.float32))
        n, h, w = x.shape
        ph, pw = (-h) % self.divisor[0], (-w) % self.divisor[1]
        fill = float(x.min()) if n else 0.0
        flips = [(), (2,), (3,), (2, 3)] if tta else [()]
        out = []
        for i in range(0, n, self.batch_size):
            b = x[i : i + self.batch_size, None].to(self.device)
            if ph or pw:
                b = torch.nn.functional.pad(b, (0, pw, 0, ph), value=fill)
            acc = None
            for f in flips:
                p = self._softmax(b.flip(f)).flip(f) if f else self._softmax(b)
                acc = p if acc is None else acc + p
            out.append((acc / len(flips))[:, :, :h, :w].cpu())
        return torch.cat(out) if out else torch.zeros((0, self.num_classes, h, w))

    # -- whole volumes
    def _prepare(self, image, spacing, affine) -> tuple[np.ndarray, Geometry, bool]:
        arr = np.asarray(image)
        if arr.ndim not in (3, 4):
            raise DataError(None, f"image must be (X, Y, Z) or (X, Y, Z, T); got shape {arr.shape}")
        sp = tuple(float(s) for s in np.asarray(spacing, dtype=float).ravel()[:3])
        if len(sp) != 3 or not all(np.isfinite(sp)) or min(sp) <= 0:
            raise DataError(None, f"spacing must be 3 positive numbers (sx, sy, sz) in mm; got {spacing}")
        arr = arr.astype(np.float32, copy=False)
        if not np.isfinite(arr).all():
            raise DataError(None, "image holds NaN or infinite values")
        is3d = arr.ndim == 3
        xyzt = arr[..., None] if is3d else arr
        geom = make_geometry(xyzt.shape[:3], sp, np.eye(4) if affine is None else affine, self.spacing, self.size)
        return image_to_slices(zscore(xyzt), geom), geom, is3d

    def _frame_probs(self, slices_tzss: np.ndarray, tta: bool | None):
        """Yield (t, (Z, C, S, S) probs), forwarding as many whole frames per batch as fit."""
        T, Z = slices_tzss.shape[:2]
        per = max(1, self.batch_size // max(Z, 1))
        for t0 in range(0, T, per):
            chunk = np.asarray(slices_tzss[t0 : t0 + per], dtype=np.float32)
            probs = self.forward_slices(chunk.reshape(-1, *chunk.shape[2:]), tta)
            for k in range(chunk.shape[0]):
                yield t0 + k, probs[k * Z : (k + 1) * Z]

    def _post(self, labels: np.ndarray, largest_component: bool | None) -> np.ndarray:
        lc = self.largest_component if largest_component is None else largest_component
        return keep_connected_heart(labels) if lc else labels

    def predict_probs(self, image: np.ndarray, spacing, affine=None, tta: bool | None = None) -> np.ndarray:
        """(X, Y, Z) or (X, Y, Z, T) image -> (T, C, X, Y, Z) float32 probabilities on the native grid."""
        slices, geom, _ = self._prepare(image, spacing, affine)
        bg = torch.zeros(self.num_classes)
        bg[0] = 1.0
        out = np.zeros((slices.shape[0], self.num_classes, *geom.native_shape), dtype=np.float32)
        for t, p in self._frame_probs(slices, tta):
            native = _resize(_uncrop(p, geom.offset, geom.resampled_shape, bg), geom.native_shape[:2])  # Z, C, X, Y
            out[t] = native.permute(1, 2, 3, 0).numpy()
        return out

    def __call__(self, image: np.ndarray, spacing, affine=None, tta: bool | None = None,
                 largest_component: bool | None = None) -> np.ndarray:
        """(X, Y, Z) or (X, Y, Z, T) image, spacing (sx, sy, sz) mm -> uint8 labels of the same shape."""
        slices, geom, is3d = self._prepare(image, spacing, affine)
        out = np.zeros((*geom.native_shape, slices.shape[0]), dtype=np.uint8)
        for t, p in self._frame_probs(slices, tta):
            out[..., t] = self._post(probs_to_native(p, geom), largest_component)
        return out[..., 0] if is3d else out

    def predict_cached(self, cache, subject: str, frames=None, tta: bool | None = None,
                       largest_component: bool | None = None) -> dict[int, np.ndarray]:
        """Frames of a cached subject (default: its labeled frames) -> {t: (X, Y, Z) uint8 native labels}.

        Uses the cache's preprocessed slices (z-scored over the whole 4D cine), so no resampling on the way in.
        """
        if (float(cache.spacing), int(cache.size)) != (self.spacing, self.size):
            warnings.warn(f"cache {cache.path} grid {cache.spacing} mm / {cache.size} px differs from the model's "
                          f"training grid {self.spacing} mm / {self.size} px", stacklevel=2)
        meta, geom = cache.meta(subject), cache.geometry(subject)
        frames = list(meta["label_frames"] if frames is None else frames)
        bad = [t for t in frames if not 0 <= int(t) < meta["n_frames"]]
        if bad:
            raise DataError(cache.path, f"subject {subject} has {meta['n_frames']} frames; asked for {bad}")
        image = cache.image_array(subject)
        stack = np.stack([np.asarray(image[int(t)], dtype=np.float32) for t in frames]) if frames else \
            np.zeros((0, meta["n_slices"], cache.size, cache.size), np.float32)
        return {int(frames[k]): self._post(probs_to_native(p, geom), largest_component)
                for k, p in self._frame_probs(stack, tta)}
