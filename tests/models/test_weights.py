"""``fit_state_dict``: one comparison of a state dict with a model for every loader."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cardiossp.errors import CheckpointError
from cardiossp.models import fit_state_dict


def test_fit_report_sorts_every_key_and_describes_the_misfits():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    exact = fit_state_dict(model, state, "same")
    assert exact.exact and set(exact.fits) == set(state)
    exact.require_exact("fits")  # no error
    state["0.weight"] = torch.zeros(5, 3)
    state["extra"] = torch.zeros(1)
    del state["1.bias"], state["1.num_batches_tracked"]
    fit = fit_state_dict(model, state, "file.pt", optional=("num_batches_tracked",))
    assert fit.missing == ["1.bias"] and fit.unexpected == ["extra"]
    assert fit.mismatched == {"0.weight": ((5, 3), (4, 3))}
    assert set(fit.fits) == set(state) - {"0.weight", "extra"} and not fit.exact
    assert fit_state_dict(model, state).missing == ["1.bias", "1.num_batches_tracked"]
    assert fit.describe(theirs="file") == ("1 missing keys (1.bias); 1 unexpected keys (extra); "
                                           "1 shape mismatches (0.weight: file (5, 3) vs model (4, 3))")
    with pytest.raises(CheckpointError, match=r"^file\.pt: does not fit: 1 missing keys .*\(hint\)$"):
        fit.require_exact("does not fit", hint=" (hint)")
    many = fit_state_dict(model, {f"k{i}": torch.zeros(1) for i in range(8)})
    assert "8 unexpected keys (k0, k1, k2 ...)" in many.describe(limit=3)
