"""Shared test fixtures.

Real data samples (see ``../shared/data/README.md``) are found at ``$CARDIOSSP_DATA`` or at
``../shared/data`` relative to the repository root. Tests that need them use the
``shared_data`` fixture (or one of the per-dataset fixtures below), which skips with the
reason when the folder is absent; such tests are marked ``realdata`` automatically, so
``pytest -m "not realdata"`` runs without the samples.

Data sources (cite when used): ACDC, Bernard et al., IEEE TMI 37(11) 2018; M&Ms, Campello et al.,
IEEE TMI 40(12) 2021; M&Ms-2, Martín-Isla et al., IEEE JBHI 27(7) 2023; Sunnybrook, Radau et al.,
MIDAS Journal 2009.
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning  # noqa: F401  (imported before any CliRunner swaps stderr: Lightning binds its log handler to it)
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_ENV = "CARDIOSSP_DATA"
_REALDATA_FIXTURES = {"shared_data", "acdc_root", "mnms_root", "mnms2_root", "sunnybrook_root"}


def find_shared_data() -> Path | None:
    """``$CARDIOSSP_DATA`` if set, else ``<repo>/../shared/data``; None if it is not a folder."""
    env = os.environ.get(DATA_ENV)
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "data"
    return path if path.is_dir() else None


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _REALDATA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.realdata)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = find_shared_data()
    if path is None:
        where = os.environ.get(DATA_ENV) or str(REPO_ROOT.parent / "shared" / "data")
        pytest.skip(f"real data samples not found at {where} (set ${DATA_ENV} to the shared data folder)")
    return path


def _dataset(shared_data: Path, name: str) -> Path:
    path = shared_data / name
    if not path.is_dir():
        pytest.skip(f"{name} sample not found in {shared_data}")
    return path


@pytest.fixture(scope="session")
def acdc_root(shared_data) -> Path:
    return _dataset(shared_data, "acdc")


@pytest.fixture(scope="session")
def mnms_root(shared_data) -> Path:
    return _dataset(shared_data, "mnms")


@pytest.fixture(scope="session")
def mnms2_root(shared_data) -> Path:
    return _dataset(shared_data, "mnms2")


@pytest.fixture(scope="session")
def sunnybrook_root(shared_data) -> Path:
    return _dataset(shared_data, "sunnybrook")


@pytest.fixture(scope="session")
def phantom_cache(tmp_path_factory):
    """A small slice cache of 10 phantom subjects (2 unlabeled) at 64x64, and a split file.

    Returns (cache folder, split file). Split: 2 val, 2 test, 4 train (budget 2), 2 unlabeled.
    """
    from cardiossp.data.cache import prepare
    from cardiossp.data.readers.phantom import write_phantom_config
    from cardiossp.data.slices import SliceCache
    from cardiossp.data.splits import make_split, save_split

    root = tmp_path_factory.mktemp("phantom")
    write_phantom_config(root / "raw", n_subjects=10, n_unlabeled=2, size=64, n_slices=4, n_frames=4)
    cache = prepare([("phantom", root / "raw")], root / "cache", spacing=1.5, size=64)
    split = save_split(make_split(SliceCache(cache).subjects, seed=0, val=2, test=2, budgets=[2]), root / "split.yaml")
    return cache, split


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Every test on one intra-op thread: tiny nets gain nothing from more (6 % on the semi-supervised and
    model tests), one pytest-xdist worker runs per CPU (pyproject's addopts), and on a shared 2-core machine
    two spin-waiting threads are 10-40x slower than one. Restores the setting at the end."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
