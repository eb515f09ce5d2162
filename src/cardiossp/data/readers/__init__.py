"""Dataset readers, registered by name; each turns one source layout into ``Subject`` records.

Importing this package registers every built-in reader.
"""

from . import acdc, camus, echonet, mnms, mnms2, nifti_folder, phantom, sunnybrook  # noqa: F401  (registration)
from .base import READERS, Reader, get_reader, iter_subjects

__all__ = ["READERS", "Reader", "get_reader", "iter_subjects"]
