"""Run commands: train / finetune, pretrain, evaluate, pseudo-label, predict, export."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import CardiosspError, ConfigError
from .common import app, console, fail, print_table, subject_progress

OVERRIDE_HELP = "override a config value, e.g. --set optim.lr=0.02 (repeatable)"
NUM_NODES_HELP = ("machines of a multi-node DDP run (world = num-nodes x devices); start the command on every "
                  "node (SLURM srun / torchrun, or MASTER_ADDR, MASTER_PORT, NODE_RANK set by hand)")


@app.command()
def train(
    cache: Path = typer.Option(..., help="cache folder (cardiossp prepare)"),
    split: Path = typer.Option(..., help="split file (cardiossp split)"),
    out: Path = typer.Option(..., help="run folder to create"),
    preset: str = typer.Option("cpu", help="paper | cpu | few | few-bcp (the few-label recipe: BCP, 6000 "
                               "iterations) | echo-lv | tiny, or a YAML file"),
    labeled_subjects: Optional[int] = typer.Option(None, help="label budget: N training subjects (a split budget)"),
    subset: Optional[str] = typer.Option(None, help="named subset of the split, e.g. vendor_AB"),
    phases: Optional[str] = typer.Option(None, help="labeled phases to train on: ED, ES or ED,ES"),
    seed: int = typer.Option(0),
    init: Optional[Path] = typer.Option(None, help="pretraining run (or pretrained.pt) to fine-tune from"),
    strategy: str = typer.Option("all", help="fine-tuning: all | frozen-encoder | warmup-frozen | multitask "
                                 "(segmentation + position pretext loss; --init a position run)"),
    warmup_frozen_epochs: int = typer.Option(0, help="epochs with a frozen encoder for warmup-frozen"),
    semi: Optional[str] = typer.Option(None, help="semi-supervised fine-tuning on the unlabeled slices too: "
                                       "mean-teacher | unimatch | bcp | self-training (give --pseudo-labels)"),
    pseudo_labels: Optional[Path] = typer.Option(None, help="self-training: the folder `cardiossp pseudo-label` "
                                                 "wrote (implies --semi self-training)"),
    encoder_weights: Optional[Path] = typer.Option(None, help="local file initialising the encoder, e.g. a "
                                                   "torchvision ResNet state dict for resnet_unet / deeplabv3"),
    resume: bool = typer.Option(False, help="continue an interrupted run from its last checkpoint"),
    devices: str = typer.Option("auto", help="devices per node (2+ runs DDP)"),
    num_nodes: int = typer.Option(1, help=NUM_NODES_HELP),
    logger: list[str] = typer.Option([], help="extra loggers: tensorboard, wandb, mlflow"),
    set_: list[str] = typer.Option([], "--set", help=OVERRIDE_HELP),
) -> None:
    """Train a segmentation network from scratch, or fine-tune it from a pretraining run (--init)."""
    from ..config import TrainConfig, load_config
    from ..train.fit import train_segmentation

    loggers = _loggers(logger)
    over = {"seed": seed, "labeled_subjects": labeled_subjects, "subset": subset, "devices": _devices(devices),
            "num_nodes": num_nodes, "finetune.strategy": strategy,
            "finetune.warmup_frozen_epochs": warmup_frozen_epochs}
    if init is not None:
        over["finetune.init"] = str(init)
    if semi is not None:
        over["semi.method"] = semi
    if pseudo_labels is not None:
        over["semi.pseudo_labels"] = str(pseudo_labels.resolve())
        over.setdefault("semi.method", "self-training")
    if encoder_weights is not None:
        over["model.encoder_weights"] = str(encoder_weights.resolve())
    if phases:
        over["data.phases"] = [p.strip() for p in phases.split(",")]
    try:
        cfg = load_config(TrainConfig, "train", preset, {**over, **_parse(set_)})
        train_segmentation(cfg, cache, split, out, resume=resume, loggers=loggers)
    except CardiosspError as e:
        fail(e)
    console.print(f"run finished: {out}")


app.command("finetune", help="Alias of train: fine-tune from a pretraining run (give --init).")(train)


@app.command()
def pretrain(
    method: str = typer.Option(..., help="simclr | pcl | dino | mim | position | byol"),
    cache: Path = typer.Option(..., help="cache folder"),
    out: Path = typer.Option(..., help="run folder to create"),
    split: Optional[Path] = typer.Option(None, help="split file: pretrain on train + unlabeled subjects only"),
    preset: str = typer.Option("cpu", help="paper | cpu | tiny, or a YAML file"),
    seed: int = typer.Option(0),
    resume: bool = typer.Option(False),
    devices: str = typer.Option("auto", help="devices per node (2+ runs DDP)"),
    num_nodes: int = typer.Option(1, help=NUM_NODES_HELP),
    logger: list[str] = typer.Option([], help="extra loggers: tensorboard, wandb, mlflow"),
    set_: list[str] = typer.Option([], "--set", help=OVERRIDE_HELP),
) -> None:
    """Self-supervised pretraining on every frame of unlabeled slices (labels are never read)."""
    from ..config import PretrainConfig, load_config
    from ..train.pretrain import pretrain as run

    loggers = _loggers(logger)
    try:
        cfg = load_config(PretrainConfig, "pretrain", preset,
                          {"method": method, "seed": seed, "devices": _devices(devices), "num_nodes": num_nodes,
                           **_parse(set_)})
        run(cfg, cache, out, split=split, resume=resume, loggers=loggers)
    except CardiosspError as e:
        fail(e)
    console.print(f"pretrained weights: {out / 'pretrained.pt'}")


@app.command()
def evaluate(
    run: Path = typer.Option(..., help="training run folder"),
    split: Optional[Path] = typer.Option(None, help="split file (default: the run's)"),
    subset: str = typer.Option("test", help="test | val | train"),
    tta: bool = typer.Option(False, help="mirror test-time augmentation"),
    largest_component: bool = typer.Option(False, help="keep one connected heart (per class one component)"),
    ema_teacher: bool = typer.Option(False, "--ema-teacher",
                                     help="use a mean-teacher / bcp run's EMA teacher instead of its student"),
    device: str = typer.Option("auto", help="auto (CUDA when there is one), cpu or cuda[:N]"),
) -> None:
    """3D Dice, HD95, ASSD, MCD per class and phase in native geometry, plus clinical indices.

    Tables go to RUN/eval/SUBSET, or SUBSET-tta / SUBSET-lcc / SUBSET-tta-lcc with those options
    (SUBSET-ema-... for the EMA teacher)."""
    from ..evaluate.run import evaluate_run

    try:
        with subject_progress("evaluate") as update:  # a bar on a terminal, else one line per subject
            summary = evaluate_run(run, split=split, subset=subset, tta=tta, largest_component=largest_component,
                                   device=device, ema_teacher=ema_teacher, progress=update)
    except CardiosspError as e:
        fail(e)
    import pandas as pd

    rows = [{"metric": k, **(v if isinstance(v, dict) else {"value": v})}
            for k, v in summary.get("overall", summary).items()]
    print_table(pd.DataFrame(rows), title=f"{run} ({subset})")


@app.command("pseudo-label")
def pseudo_label(
    model: Path = typer.Option(..., help="teacher: a training run folder or checkpoint"),
    cache: Path = typer.Option(..., help="cache folder (the teacher's grid)"),
    split: Path = typer.Option(..., help="split file: its training and unlabeled subjects are labeled"),
    out: Path = typer.Option(..., help="folder for the pseudo-labels (resumes if it exists)"),
    tta: bool = typer.Option(True, help="mirror test-time augmentation"),
    largest_component: bool = typer.Option(True, help="keep one connected 3D heart (per class one component)"),
    ema_teacher: bool = typer.Option(False, "--ema-teacher",
                                     help="use a mean-teacher / bcp run's EMA teacher instead of its student"),
    device: str = typer.Option("auto", help="auto (CUDA when there is one), cpu or cuda[:N]"),
) -> None:
    """Label every cached frame of the split's training and unlabeled subjects with a teacher, for
    self-training (`cardiossp train --pseudo-labels OUT`); never val or test subjects."""
    from ..pseudo_label import pseudo_label as make

    with subject_progress("pseudo-label") as update:
        make(model, cache, split, out, tta=tta, largest_component=largest_component, device=device, progress=update,
             ema_teacher=ema_teacher)
    console.print(f"pseudo-labels: {out}", highlight=False)


@app.command()
def predict(
    inputs: list[Path] = typer.Argument(..., help="images (3D or 4D: .nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd), "
                                        "folders of them, or DICOM series folders"),
    model: Path = typer.Option(..., help="training run folder or checkpoint"),
    out: Path = typer.Option(..., help="output folder for <name>_seg.nii.gz (.nrrd / .mha for those inputs)"),
    tta: bool = typer.Option(False, help="mirror test-time augmentation"),
    largest_component: bool = typer.Option(False, help="keep one connected heart (per class one component)"),
    device: str = typer.Option("auto", help="auto (CUDA when there is one), cpu or cuda[:N]"),
    labels: str = typer.Option("internal", help="label values written: internal (1 LV, 2 MYO, 3 RV), acdc "
                               "(1 RV, 2 MYO, 3 LV), mnms, mnms2, or a YAML file of internal -> output, "
                               "e.g. {LV: 3, MYO: 2, RV: 1}"),
    series: Optional[str] = typer.Option(None, help="SeriesInstanceUID to read from DICOM folders that hold "
                                         "several series"),
) -> None:
    """Segment new images; outputs lie on each input's grid (labels 1 LV, 2 MYO, 3 RV unless --labels)."""
    from ..data.labels import output_convention
    from ..inference import Segmenter
    from ..predict import predict_files

    try:
        convention = output_convention(labels)  # a bad --labels fails before the model loads
        seg = Segmenter.from_checkpoint(model, tta=tta, device=device)
        with subject_progress("predict") as update:  # a bar on a terminal, else one line per file
            written = predict_files(seg, inputs, out, tta=tta, largest_component=largest_component,
                                    labels=convention, series=series, progress=update)
    except CardiosspError as e:
        fail(e)
    console.print(f"wrote {len(written)} segmentations to {out} ({convention.name} labels)")


@app.command()
def export(
    run_arg: Optional[Path] = typer.Argument(None, metavar="RUN", help="training run folder (or checkpoint / "
                                             "model file); a pretraining run for --format nnunet"),
    run: Optional[Path] = typer.Option(None, "--run", help="the same as RUN"),
    out: Path = typer.Option(..., help="file to write, e.g. model.pt (cardiossp) or weights.pth (nnunet)"),
    format: str = typer.Option("nnunet", help="cardiossp: one shareable model file (weights + grid, "
                               "normalisation, labels, config) for predict --model FILE; nnunet: weights for "
                               "nnU-Net v2's PlainConvUNet"),
) -> None:
    """Export a model: one file `cardiossp predict --model FILE` uses anywhere (--format cardiossp), or the
    weights nnU-Net v2 loads (--format nnunet: everything but the segmentation layers). A SHA-256 sidecar
    (FILE.sha256) goes next to either."""
    from ..train.export import export_model, export_nnunet

    if format not in ("cardiossp", "nnunet"):
        fail(CardiosspError(f"unknown export format {format!r}; choose cardiossp or nnunet"))
    if (run_arg is None) == (run is None):
        fail(CardiosspError("give the run once: cardiossp export RUN --out FILE (or --run RUN)"))
    src = run_arg if run_arg is not None else run
    try:
        if format == "cardiossp":
            record = export_model(src, out)
            g = record["grid"]
            console.print(f"wrote {out} ({record['task']} model, {g['spacing_mm']} mm / {g['size_px']} px grid, "
                          f"classes {', '.join(record['labels']['class_names'][1:])})")
            return
        n = export_nnunet(src, out)
    except CardiosspError as e:
        fail(e)
    console.print(f"wrote {n} tensors to {out}")


LOGGERS = ("tensorboard", "wandb", "mlflow")  # what train/engine.build_trainer adds


def _devices(devices: str):
    return int(devices) if devices.strip().isdigit() else devices.strip()


def _loggers(names: list[str]) -> tuple[str, ...]:
    """``--logger`` values, checked before any work (the engine meets them only once the run is set up)."""
    from ..config_checks import check_option

    try:
        for name in names:
            check_option("--logger", name, str, choices=LOGGERS)
    except CardiosspError as e:
        fail(e)
    return tuple(names)


def _parse(items: list[str]) -> dict:
    """``--set key=value`` items -> {dotted key: YAML value}."""
    from ..config import parse_override

    out = {}
    for item in items:
        try:
            k, v = parse_override(item, "--set")
        except CardiosspError as e:
            fail(e)
        out[k] = v
    return out


@app.command()
def bench(
    data: Optional[Path] = typer.Option(None, help="dataset folder, e.g. ../shared/data/acdc"),
    out: Path = typer.Option(Path("bench-out"), help="output folder (cache, split, run, bench.md)"),
    reader: str = typer.Option("acdc"),
    preset: str = typer.Option("cpu"),
    seed: int = typer.Option(0),
    spacing: float = typer.Option(1.6, help="cache in-plane spacing (mm)"),
    size: int = typer.Option(160, help="cache slice size (px)"),
    set_: list[str] = typer.Option([], "--set", help=OVERRIDE_HELP),
    throughput: bool = typer.Option(False, help="instead: training throughput of the networks on this machine "
                                    "(bare vs engine step, fp32 vs bf16), written to OUT/throughput.md"),
    quick: bool = typer.Option(False, help="with --throughput: a seconds-long run on a tiny net"),
) -> None:
    """Supervised benchmark: train a preset on a fixed split, report test Dice, HD95, LVEF error, time, memory.

    Pretraining comparisons are experiment plans: `cardiossp experiment acdc-cpu --studies label_budget`."""
    if throughput:
        from ..throughput import throughput_table

        typer.echo(throughput_table(out, quick=quick))
        return
    if data is None:
        fail(ConfigError("bench needs --data (a dataset folder), or --throughput"))
    from ..bench import bench_supervised
    from ..config import TrainConfig, load_config
    from .data_commands import check_grid

    overrides = _parse(set_)
    try:
        check_grid(spacing, size)
        load_config(TrainConfig, "train", preset, {"seed": seed, **overrides})  # bad values fail before the cache
        bench_supervised(data, out, reader=reader, preset=preset, seed=seed, overrides=overrides,
                         spacing=spacing, size=size)
    except CardiosspError as e:
        fail(e)
    console.print((out / "bench.md").read_text())
