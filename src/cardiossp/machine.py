"""The machine a run or a benchmark ran on, so that every wall time names its hardware.

Written into each run's ``done.json`` (``machine``), its ``train.log`` and ``report.html``, printed by
``cardiossp bench`` (also ``--throughput``) and the benchmark scripts. A CPU's marketing name alone does not
say how fast it is: our virtual machines report "AMD EPYC" for parts of several generations, and two of them
(family 23 model 49, family 25 model 1) ran the few-label steps 1.5-2x apart in fp32 (docs/BENCHMARKS.md), so
x86 names carry the CPU family and model as ``lscpu`` prints them ("AMD EPYC (family 25 model 1)").
"""

from __future__ import annotations

import contextlib
import os
import platform

import torch

from .train import precision


def cpu_name(cpuinfo: str | None = None) -> str:
    """The CPU's model name, with ``(family F model M)`` where ``/proc/cpuinfo`` gives them (x86);
    ``cpuinfo`` is that file's text (read from the machine when None)."""
    if cpuinfo is None:
        cpuinfo = ""
        with contextlib.suppress(OSError):
            cpuinfo = precision.CPUINFO.read_text(errors="replace")
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            if fields:  # a blank line ends the first processor's block
                break
            continue
        fields.setdefault(key.strip().lower(), value.strip())
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']} model {fields['model']})"
    return name


def machine_facts() -> dict:
    """JSON-ready facts of this machine: CPU name, logical CPUs, torch's threads, native bf16, CUDA GPUs."""
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
        if torch.cuda.is_available() else []
    return {"cpu": cpu_name(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cpu_native_bf16": precision.cpu_has_native_bf16(), "gpus": gpus}


def machine_summary(facts: dict | None = None) -> str:
    """One line of :func:`machine_facts`: ``AMD EPYC (family 25 model 1), 2 CPUs, 2 torch threads, no native
    bf16`` (then the GPUs, if any)."""
    f = machine_facts() if facts is None else facts
    text = (f"{f.get('cpu', 'unknown CPU')}, {f.get('cpus')} CPUs, {f.get('torch_threads')} torch threads, "
            f"{'native' if f.get('cpu_native_bf16') else 'no native'} bf16")
    gpus = f.get("gpus") or []
    return text + (f"; GPUs: {', '.join(gpus)}" if gpus else "")
