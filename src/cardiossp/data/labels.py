"""Label conventions.

The one internal convention of cardiossp (used by the cache, training, metrics and
exported predictions):

    0 background, 1 LV (left-ventricular blood pool), 2 MYO (LV myocardium), 3 RV (right-ventricular blood pool)

Each public dataset labels these structures differently; ``DATASET_LABEL_MAPS`` maps a
dataset's label values to the internal ones.
"""

from __future__ import annotations

import numpy as np

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
}


def map_labels(labels: np.ndarray, mapping: dict[int, int], source: str = "") -> np.ndarray:
    """Map dataset label values to the internal convention.

    Raises ``ValueError`` naming the unknown values if ``labels`` holds a value
    that ``mapping`` does not cover (callers turn it into a ``DataError`` with the file).
    """
    values = np.unique(labels)
    unknown = sorted(int(v) for v in values if int(v) not in mapping)
    if unknown:
        raise ValueError(
            f"label values {unknown} are not in the {source or 'given'} label map {sorted(mapping)}"
        )
    lut = np.zeros(max(max(mapping), int(values.max()) if values.size else 0) + 1, dtype=np.uint8)
    for src, dst in mapping.items():
        lut[src] = dst
    return lut[labels.astype(np.int64)]
