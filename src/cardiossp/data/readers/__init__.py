"""Dataset readers, registered by name; each turns one source layout into ``Subject`` records.

Importing this package registers every built-in reader.
"""

from .base import READERS, Reader, get_reader, iter_subjects
from . import acdc, mnms, mnms2, nifti_folder, phantom, sunnybrook  # noqa: F401  (registration)

__all__ = ["READERS", "Reader", "get_reader", "iter_subjects"]
