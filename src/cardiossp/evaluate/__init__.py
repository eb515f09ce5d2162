"""Evaluation: segmentation metrics (Dice, HD95, ASSD, mean contour distance) and clinical indices.

Label maps are (X, Y, Z) arrays in the internal convention 0 background, 1 LV, 2 MYO, 3 RV.
"""

from cardiossp.evaluate.clinical import clinical_indices, index_errors, volumes_ml
from cardiossp.evaluate.metrics import (
    assd,
    dice_3d,
    evaluate_case,
    hd95,
    mean_contour_distance,
    surface_distances,
)

__all__ = [
    "assd",
    "clinical_indices",
    "dice_3d",
    "evaluate_case",
    "hd95",
    "index_errors",
    "mean_contour_distance",
    "surface_distances",
    "volumes_ml",
]
