"""Every registered SSP method on every registered model (``cardiossp.models.MODELS``).

A step or two of each method (its tiny config from ``test_methods``) on each model at 64 px, then
transfer into a fresh segmentation model of the same kind. New methods (``TINY_CFG``) and new models
(``TINY_MODELS``) are picked up by the parametrisation; the guard tests fail until they are listed.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import default_collate

from cardiossp.models import MODELS, build_model, key_groups
from cardiossp.ssp import SSP_METHODS, build_method

from .test_methods import TINY_CFG, disc_sample

MODEL_SIZE = 64
TINY_MODELS = {  # every registered model (cardiossp.models), small enough for a step at MODEL_SIZE px
    "unet": {"n_stages": 4, "base_features": 8, "max_features": 32},
    "resnet_unet": {"depth": 18, "decoder_channels": (32, 16, 16, 8, 8)},
    "deeplabv3": {},  # ~40M parameters: one step, batch 2
}


_BUILT: dict[tuple, nn.Module] = {}


def model_factory(model: str):
    """Backbone factory for ``model``; each (classes, DS) variant is built once per session and copied
    (DeepLabV3's 40M-parameter init costs about a second), so every test starts from the same init."""

    def factory(num_classes: int, deep_supervision: bool) -> nn.Module:
        key = (model, num_classes, deep_supervision)
        if key not in _BUILT:
            _BUILT[key] = build_model(model, num_classes=num_classes, deep_supervision=deep_supervision,
                                      **TINY_MODELS[model])  # fmt: skip
        return copy.deepcopy(_BUILT[key])

    return factory



def test_every_registered_model_and_method_has_a_tiny_config():
    assert set(MODELS.names()) == set(TINY_MODELS)
    assert set(SSP_METHODS.names()) == set(TINY_CFG)


@pytest.mark.parametrize("model", sorted(TINY_MODELS))
@pytest.mark.parametrize("name", sorted(TINY_CFG))
def test_method_on_every_registered_model(name, model):
    """A step or two of each method on each model, then transfer into a fresh segmentation model of the
    same kind: exactly the transferred groups (``encoder``, + ``decoder`` for MIM) change."""
    torch.manual_seed(0)
    factory = model_factory(model)
    method = build_method(name, factory, {"input_size": MODEL_SIZE, **TINY_CFG[name]})
    rng = np.random.default_rng(1)
    batch = default_collate([method.make_views(disc_sample(rng, i, 2, size=MODEL_SIZE + 8)) for i in range(2)])
    before = method.transferable_state()
    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=2e-3)
    for step in range(1 if model == "deeplabv3" else 2):
        out = method.forward_loss(batch, step / 2)
        assert torch.isfinite(out["loss"])
        opt.zero_grad()
        out["loss"].backward()
        method.on_after_backward(1)
        opt.step()
        method.on_train_batch_end(step / 2)

    state = method.transferable_state()
    seg = factory(4, True)
    fresh = {k: v.clone() for k, v in seg.state_dict().items()}
    groups = key_groups(seg)
    expected = set(groups["encoder"]) | (set(groups["decoder"]) if "decoder" in method.transfers else set())
    assert set(state) == expected
    seg.load_state_dict(state, strict=False)
    for key, param in seg.named_parameters():
        if key in state:
            assert torch.equal(param, state[key]) and not torch.equal(param, fresh[key]), key
            assert not torch.equal(state[key], before[key]), f"{key} was not trained"
        else:
            assert torch.equal(param, fresh[key]), key
