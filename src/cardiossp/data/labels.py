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
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError

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

