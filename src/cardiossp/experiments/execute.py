"""The executor that runs a campaign's runs in this process: prepare, pretrain, train, evaluate."""

from __future__ import annotations

from pathlib import Path

from ..data.cache import cache_lock, prepare
from ..data.readers.phantom import write_phantom_config
from ..data.slices import SliceCache
from ..data.splits import load_split, make_split, save_split
from ..errors import ConfigError
from ..evaluate.run import evaluate_run
from ..pseudo_label import pseudo_label
from ..train.fit import train_segmentation
from ..train.pretrain import pretrain
from .plan import Plan, RunSpec, pretrain_config, train_config

BUILTIN_PHANTOM = "builtin"


def domain_subsets(subjects, train_ids: list[str], key: str, groups: dict[str, list]) -> dict[str, list[str]]:
    """Named training subsets: the training subjects whose ``key`` column (vendor, pathology, ...) is in
    the group's values."""
    if key not in subjects:
        raise ConfigError(f"domains.key {key!r} is not a subject column; columns: {sorted(subjects.columns)}")
    from ..data.splits import require_metadata

    require_metadata(subjects, key, train_ids, f"the {key} groups {sorted(groups)} of the domain study")
    value_of = dict(zip(subjects["subject"], subjects[key].astype(str)))
    out = {}
    for name, values in groups.items():
        chosen = sorted(i for i in train_ids if value_of.get(i) in {str(v) for v in values})
        if not chosen:
            raise ConfigError(f"domain group {name!r} ({key} in {values}) has no training subject")
        out[name] = chosen
    return out


class LocalExecutor:
    """Runs everything here, one run at a time; ``progress`` shows Lightning's bars; ``num_nodes`` > 1
    makes every pretraining and training run a multi-node DDP run (override ``num_nodes``); ``device``
    (auto, cpu, cuda) is where the test subjects are segmented."""

    def __init__(self, progress: bool = False, num_nodes: int = 1, device: str = "auto"):
        self.progress = progress
        self.num_nodes = int(num_nodes)
        self.device = device
        self.cache: Path | None = None
        self.split: Path | None = None
        self.out: Path | None = None  # the campaign folder
        self.plan: Plan | None = None

    def prepare(self, plan: Plan, out: Path) -> None:
        """Prepare the campaign's cache and split once: ``experiment --shard`` jobs started together take the
        cache's lock in turn (``data.cache.cache_lock``), so the first writes and the others reuse."""
        with cache_lock(out / "cache"):
            self._prepare(plan, out)
        self.out = out

    def _prepare(self, plan: Plan, out: Path) -> None:
        sources = []
        for s in plan.data:
            path = s["path"]
            if s["reader"] == "phantom" and path == BUILTIN_PHANTOM:
                path = write_phantom_config(out / "phantom", **plan.phantom)
            sources.append((s["reader"], path))
        self.cache = prepare(sources, out / "cache", spacing=float(plan.cache.get("spacing", 1.6)),
                             size=int(plan.cache.get("size", 160)))
        self.split = out / "split.yaml"
        if not self.split.exists():
            sp = plan.split
            subjects = SliceCache(self.cache).subjects
            split = make_split(subjects, seed=int(sp.get("seed", 0)), val=sp.get("val", 0.15),
                               test=sp.get("test", 0.2), budgets=plan.budgets(), stratify=sp.get("stratify", "auto"))
            if plan.domains.get("groups"):
                split["subsets"].update(domain_subsets(subjects, split["train"], plan.domains.get("key", "vendor"),
                                                       plan.domains["groups"]))
            save_split(split, self.split)
        else:
            missing = sorted(set(plan.budgets()) - set(load_split(self.split)["budgets"]))
            if missing:
                raise ConfigError(f"{self.split} was made for another plan: it lacks budgets {missing}")
        self.plan = plan

    def pretrain(self, spec: RunSpec, folder: Path) -> None:
        cfg = pretrain_config(self.plan, {**spec.overrides(), **self._nodes()})
        pretrain(cfg, self.cache, folder, split=self.split, resume=(folder / "checkpoints" / "last.ckpt").exists(),
                 progress=self.progress)

    def train(self, spec: RunSpec, folder: Path, init: Path | None) -> None:
        over = {**spec.overrides(), **self._nodes()}
        if init is not None:
            over["finetune.init"] = str(init)
        if spec.teacher is not None:  # self-training: label the pool with the (finished) teacher run first
            over["semi.pseudo_labels"] = str(self.out / over["semi.pseudo_labels"])
            pseudo_label(self.out / spec.teacher, self.cache, self.split, over["semi.pseudo_labels"],
                         device=self.device)
        cfg = train_config(self.plan, over)
        train_segmentation(cfg, self.cache, self.split, folder,
                           resume=(folder / "checkpoints" / "last.ckpt").exists(), progress=self.progress)

    def _nodes(self) -> dict:
        return {"num_nodes": self.num_nodes} if self.num_nodes != 1 else {}

    def evaluate(self, spec: RunSpec, folder: Path) -> None:
        evaluate_run(folder, split=self.split, subset="test", cache=self.cache, device=self.device, tta=spec.tta,
                     largest_component=spec.largest_component)
