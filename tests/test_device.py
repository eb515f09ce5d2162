"""``--device`` on predict / evaluate / experiment: auto picks CUDA only when there is one."""

import pytest
import torch

from cardiossp.errors import ConfigError
from cardiossp.inference import resolve_device


def test_resolve_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="choose auto, cpu"):
        resolve_device("tpu9")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda") and resolve_device("cuda:1") == torch.device("cuda:1")
