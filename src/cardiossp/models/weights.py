"""How a state dict fits a model: one comparison for every loader.

``fit_state_dict(model, state, source)`` sorts the keys of ``state`` against ``model.state_dict()``
into those that fit (same name and shape), the model's keys ``state`` lacks (missing), the keys the
model lacks (unexpected) and the keys of both with other shapes (mismatched). The loaders decide
what is acceptable: a checkpoint (inference) and an encoder file (``load_encoder_weights_file``)
must fit exactly, pretrained weights (fine-tuning) load what fits and report the rest, an nnU-Net
export completes pretrained weights with a fresh initialisation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor, nn

from ..errors import CheckpointError


@dataclass(frozen=True)
class FitReport:
    """Keys of a state dict (from ``source``) against a model's.

    fits: the state's tensors whose key and shape the model has (load with ``strict=False``).
    missing: the model's keys the state lacks (model order).
    unexpected: the state's keys the model lacks (state order).
    mismatched: ``key -> (shape in the state, shape in the model)`` (model order).
    """

    source: str
    fits: dict[str, Tensor]
    missing: list[str]
    unexpected: list[str]
    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]

    @property
    def exact(self) -> bool:
        """Every key of the model is in the state with its shape, and nothing else."""
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 6, theirs: str = "checkpoint") -> str:
        """``"2 missing keys (a, b); 1 shape mismatches (k: checkpoint (3,) vs model (4,))"``, at most
        ``limit`` keys per kind; ``theirs`` names the state's side of a shape mismatch."""
        mismatched = [f"{k}: {theirs} {a} vs model {b}" for k, (a, b) in self.mismatched.items()]

        def show(what: str, items: list[str]) -> str:
            return f"{len(items)} {what} ({', '.join(items[:limit])}{' ...' if len(items) > limit else ''})"

        return "; ".join(show(what, items) for what, items in (
            ("missing keys", self.missing), ("unexpected keys", self.unexpected),
            ("shape mismatches", mismatched)) if items)  # fmt: skip

    def require_exact(self, what: str, hint: str = "", limit: int = 6, theirs: str = "checkpoint") -> None:
        """Raise ``CheckpointError("<source>: <what>: <describe()><hint>")`` unless ``exact``."""
        if not self.exact:
            raise CheckpointError(f"{self.source}: {what}: {self.describe(limit, theirs)}{hint}")


def fit_state_dict(model: nn.Module | Mapping[str, Tensor], state: Mapping[str, Tensor], source: str = "",
                   optional: tuple[str, ...] = ()) -> FitReport:  # fmt: skip
    """Compare ``state`` with ``model.state_dict()`` (or a state dict given as ``model``).

    ``optional``: key suffixes the state may lack without counting as missing (e.g.
    ``("num_batches_tracked",)`` for old torchvision files).
    """
    own = model.state_dict() if isinstance(model, nn.Module) else model
    return FitReport(
        source=str(source),
        fits={k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)},
        missing=[k for k in own if k not in state and not (optional and k.endswith(optional))],
        unexpected=[k for k in state if k not in own],
        mismatched={k: (tuple(state[k].shape), tuple(own[k].shape))
                    for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)},  # fmt: skip
    )
