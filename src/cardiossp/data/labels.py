"""Label conventions.

The one internal convention of cardiossp (used by the cache, training, metrics and
exported predictions):

    0 background, 1 LV (left-ventricular blood pool), 2 MYO (LV myocardium), 3 RV (right-ventricular blood pool)

Each public dataset labels these structures differently; ``DATASET_LABEL_MAPS`` maps a
dataset's label values to the internal ones.

Echocardiography (Saeed et al. 2022): CAMUS labels 1 LV endocardium (blood pool), 2 myocardium, 3 left
atrium. The left atrium is *not* the RV, and adding an LA class would change the output layer
of every network and checkpoint, so CAMUS's LA is mapped to background here; the CAMUS reader
keeps the LA mask in ``Subject.extra["left_atrium"]`` for a future task. Label 3 (RV) simply
never occurs in echo data. EchoNet-Dynamic tracings give the LV blood pool only.

Tasks (``TrainConfig.data.task``) choose which internal classes a network predicts:
``cardiac`` (LV, MYO, RV; the default) or ``lv`` (binary LV vs background, the echo task of
Saeed et al. 2022). A task keeps its classes in internal order and numbers them 1..n, so for ``lv`` the
network's class 1 *is* internal label 1 (LV); ``to_task`` / ``task_to_internal`` convert.

Output conventions (``predict --labels``): written label files use the internal convention unless
asked for a dataset's own (``acdc``: 1 RV, 2 MYO, 3 LV; ``mnms`` / ``mnms2``: 1 LV, 2 MYO, 3 RV), so that
a result opened beside that dataset's ground truth shows the same colours; or a YAML mapping file of
internal class -> output value (``{LV: 3, MYO: 2, RV: 1}``, names or internal values as keys).
``output_convention`` resolves either to a lookup table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError

BACKGROUND, LV, MYO, RV = 0, 1, 2, 3
CLASS_NAMES: dict[int, str] = {LV: "LV", MYO: "MYO", RV: "RV"}
NUM_CLASSES = 4  # including background

# dataset label value -> internal label value
DATASET_LABEL_MAPS: dict[str, dict[int, int]] = {
    "acdc": {0: BACKGROUND, 1: RV, 2: MYO, 3: LV},
    "mnms": {0: BACKGROUND, 1: LV, 2: MYO, 3: RV},
    "mnms2": {0: BACKGROUND, 1: LV, 2: MYO, 3: RV},
    "internal": {0: BACKGROUND, 1: LV, 2: MYO, 3: RV},
    # Sunnybrook contours give LV cavity and myocardium only (no RV).
    "sunnybrook": {0: BACKGROUND, 1: LV, 2: MYO},
    # CAMUS: 1 LV endocardium, 2 myocardium, 3 left atrium -> background (see the module docstring).
    "camus": {0: BACKGROUND, 1: LV, 2: MYO, 3: BACKGROUND},
    # EchoNet-Dynamic: LV tracings only.
    "echonet": {0: BACKGROUND, 1: LV},
}

# conventions a prediction can be written in (``output_convention``): each is a bijection of DATASET_LABEL_MAPS
OUTPUT_CONVENTIONS = ("internal", "acdc", "mnms", "mnms2")

# task name -> internal classes it predicts (besides background)
TASKS: dict[str, tuple[int, ...]] = {"cardiac": (LV, MYO, RV), "lv": (LV,)}


def map_labels(labels: np.ndarray, mapping: dict[int, int], source: str = "") -> np.ndarray:
    """Map dataset label values to the internal convention.

    Raises ``ValueError`` naming the unknown values if ``labels`` holds a value
    that ``mapping`` does not cover (callers turn it into a ``DataError`` with the file).
    """
    values = np.unique(labels)
    unknown = sorted(int(v) for v in values if int(v) not in mapping)
    if unknown:
        raise ValueError(f"label values {unknown} are not in the {source or 'given'} label map {sorted(mapping)}")
    lut = np.zeros(max(max(mapping), int(values.max()) if values.size else 0) + 1, dtype=np.uint8)
    for src, dst in mapping.items():
        lut[src] = dst
    return lut[labels.astype(np.int64)]


@dataclass(frozen=True)
class OutputConvention:
    """How predictions are written: ``lut[internal label]`` is the value in the file."""

    name: str  # internal, acdc, mnms, mnms2, or the mapping file's name
    lut: np.ndarray  # (NUM_CLASSES,) uint8

    @property
    def names(self) -> dict[int, str]:
        """Output value -> structure, e.g. ``{0: "bg", 1: "RV", 2: "MYO", 3: "LV"}`` for ACDC."""
        named = {BACKGROUND: "bg", **CLASS_NAMES}
        return dict(sorted((int(self.lut[c]), named[c]) for c in range(NUM_CLASSES)))

    def describe(self) -> str:
        """``"cardiossp labels (acdc) 0 bg 1 RV 2 MYO 3 LV"``: what the NIfTI ``descrip`` field says (<= 80 bytes)."""
        text = f"cardiossp labels ({self.name}) " + " ".join(f"{v} {n}" for v, n in self.names.items())
        return text if len(text.encode()) <= 80 else text.encode()[:80].decode(errors="ignore")

    def apply(self, labels: np.ndarray) -> np.ndarray:
        """Internal labels -> this convention's values (uint8)."""
        return self.lut[np.asarray(labels, dtype=np.int64)]


def output_convention(spec: str | Path = "internal") -> OutputConvention:
    """``"internal"``, ``"acdc"``, ``"mnms"``, ``"mnms2"`` or a YAML file mapping internal classes to output values.

    A mapping file holds ``{LV: 3, MYO: 2, RV: 1}`` (keys: LV / MYO / RV / background or internal values
    1 / 2 / 3 / 0; background defaults to 0); every class needs a distinct value in 0..255.
    ``ConfigError`` for an unknown name, ``DataError`` for an unreadable or ambiguous file.
    """
    text = str(spec).strip()
    if text.lower() in OUTPUT_CONVENTIONS:
        name = text.lower()
        inverse = {dst: src for src, dst in DATASET_LABEL_MAPS[name].items()}
        return OutputConvention(name, np.array([inverse[c] for c in range(NUM_CLASSES)], dtype=np.uint8))
    path = Path(text)
    if path.suffix.lower() not in (".yaml", ".yml", ".json") and not path.is_file():
        raise ConfigError(f"--labels {text!r}: choose one of {', '.join(OUTPUT_CONVENTIONS)}, or give a YAML file "
                          "mapping internal classes to output values, e.g. {LV: 3, MYO: 2, RV: 1}")
    return OutputConvention(path.name, _read_mapping(path))


def _read_mapping(path: Path) -> np.ndarray:
    import yaml

    if not path.is_file():
        raise DataError(path, "label mapping file not found")
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise DataError(path, f"cannot read the label mapping (YAML): {e}") from None
    if not isinstance(doc, dict) or not doc:
        raise DataError(path, "label mapping must be a mapping of internal classes to output values, "
                              "e.g. {LV: 3, MYO: 2, RV: 1}")
    by_name = {"bg": BACKGROUND, "background": BACKGROUND, **{n.lower(): c for c, n in CLASS_NAMES.items()}}
    lut: dict[int, int] = {}
    for key, value in doc.items():
        k = str(key).strip().lower()
        cls = by_name.get(k, int(k) if k.isdigit() and int(k) < NUM_CLASSES else None)
        if cls is None:
            raise DataError(path, f"unknown class {key!r}: keys are LV, MYO, RV, background (or 1, 2, 3, 0)")
        if cls in lut:
            raise DataError(path, f"class {key!r} ({({BACKGROUND: 'bg', **CLASS_NAMES})[cls]}) is given twice")
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
            raise DataError(path, f"value of {key!r} is {value!r}: give a whole number 0..255")
        lut[cls] = value
    lut.setdefault(BACKGROUND, 0)
    missing = [CLASS_NAMES[c] for c in CLASS_NAMES if c not in lut]
    if missing:
        raise DataError(path, f"label mapping gives no value for {', '.join(missing)}")
    values = list(lut.values())
    if len(set(values)) != len(values):
        raise DataError(path, f"label mapping gives two classes the same value ({lut}): the file could not be "
                              "read back")
    return np.array([lut[c] for c in range(NUM_CLASSES)], dtype=np.uint8)


def task_classes(task: str) -> tuple[int, ...]:
    """Internal labels a task predicts (background excluded); ``ConfigError`` for an unknown task."""
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)} (data.task)")
    return TASKS[task]


def task_num_classes(task: str) -> int:
    """Network output channels of a task, background included (``cardiac`` 4, ``lv`` 2)."""
    return len(task_classes(task)) + 1


def task_class_names(task: str) -> dict[int, str]:
    """Task class index -> name, e.g. ``{1: "LV"}`` for ``lv``."""
    return {k: CLASS_NAMES[c] for k, c in enumerate(task_classes(task), start=1)}


def task_lut(task: str) -> np.ndarray:
    """(NUM_CLASSES,) lookup table internal label -> task label (classes outside the task -> 0)."""
    lut = np.zeros(NUM_CLASSES, dtype=np.uint8)
    for k, c in enumerate(task_classes(task), start=1):
        lut[c] = k
    return lut


def to_task(labels: np.ndarray, task: str) -> np.ndarray:
    """Internal labels -> task labels (``lv``: MYO and RV become background)."""
    return task_lut(task)[np.asarray(labels, dtype=np.int64)]


def task_to_internal(labels: np.ndarray, task: str) -> np.ndarray:
    """Task labels (a task network's arg-max) -> internal labels."""
    inverse = np.array((BACKGROUND, *task_classes(task)), dtype=np.uint8)
    return inverse[np.asarray(labels, dtype=np.int64)]


def keep_largest_component(labels, classes=(1, 2, 3)):
    """Keep, per class, the largest face-connected component of a label map (2D or 3D, NumPy or
    torch); the rest of that class becomes background. nnU-Net's "remove all but the largest
    component" post-processing (Isensee et al. 2021); BCP's pseudo-label clean-up (Bai et al. 2023).
    The components come from MONAI's ``get_largest_connected_component_mask``."""
    from monai.transforms.utils import get_largest_connected_component_mask

    out = labels.clone() if hasattr(labels, "clone") else np.array(labels, copy=True)
    for c in classes:
        mask = labels == c
        if mask.any():
            keep = get_largest_connected_component_mask(mask, connectivity=1)
            out[mask & ~(keep.bool() if hasattr(keep, "bool") else keep.astype(bool))] = 0
    return out


CONNECTED_HEART = "connected-heart"  # the clean-up's name in summaries and pseudo-label records


def keep_connected_heart(labels: np.ndarray, candidates: int = 3, min_share: float = 0.5) -> np.ndarray:
    """The largest-component clean-up, made to keep one heart: a (Z, X, Y) or (X, Y, Z) internal label map
    -> the same with, per class, one face-connected component, chosen together. For each of the
    ``candidates`` largest MYO components holding at least ``min_share`` of the largest one's voxels, LV
    and RV are each their component touching that MYO most (the largest one if none touches it); the
    candidate whose MYO plus *touching* LV and RV hold the most voxels wins. Without MYO (an ``lv`` task),
    ``keep_largest_component``. ``min_share`` 0.5 was chosen on the pseudo-labels of two BCP teachers (140
    pool frames each, docs/RESULTS.md): without it, a whole false heart with a small MYO and a large LV + RV
    won once.

    Why (docs/RESULTS.md, stop 20): with 5 labeled subjects a network sometimes draws a second, false
    LV / MYO pair at the base or apex, and at end-systole the false LV can outgrow the true cavity; the
    per-class rule then keeps the false one and the LV Dice of that case drops to 0 (3 of 40 test cases of
    one BCP teacher). Anchoring LV and RV on the myocardium they touch keeps the true cavity. Written here
    because MONAI's ``KeepLargestConnectedComponent`` chooses per class (or over their union), never by
    contact between classes."""
    from scipy import ndimage

    labels = np.asarray(labels)
    face = ndimage.generate_binary_structure(labels.ndim, 1)
    myo, n_myo = ndimage.label(labels == MYO, structure=face)
    if n_myo == 0:
        return keep_largest_component(labels)
    myo_size = np.bincount(myo.ravel())[1:]
    others = {}
    for c in (LV, RV):
        comp, n = ndimage.label(labels == c, structure=face)
        others[c] = (comp, n, np.bincount(comp.ravel())[1:])
    best_score, best = -1.0, None
    order = np.argsort(-myo_size, kind="stable")[:candidates]
    for m in [m for m in order if myo_size[m] >= min_share * myo_size.max()]:
        ring = myo == m + 1
        near = ndimage.binary_dilation(ring, structure=face)
        keep, score = {MYO: ring}, float(myo_size[m])
        for c, (comp, n, sizes) in others.items():
            if n == 0:
                continue
            touch = np.bincount(comp[near], minlength=n + 1)[1:]
            i = max(range(n), key=lambda j: (touch[j], sizes[j]))
            keep[c] = comp == i + 1
            score += float(sizes[i]) if touch[i] > 0 else 0.0
        if score > best_score:
            best_score, best = score, keep
    out = np.zeros_like(labels)
    for c, mask in best.items():
        out[mask] = c
    return out
