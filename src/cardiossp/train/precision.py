"""Which precision a run trains in: ``precision: auto`` picks bf16 only where the hardware does bf16
arithmetic natively (detected at run time, never assumed), fp16 mixed on older CUDA GPUs, fp32 elsewhere."""

from __future__ import annotations

from pathlib import Path

import torch

CPUINFO = Path("/proc/cpuinfo")
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 flags of native bf16 arithmetic (Cooper Lake, Sapphire Rapids+)


def cpu_has_native_bf16() -> bool:
    """True when this CPU does bf16 arithmetic natively (x86 ``avx512_bf16`` / ``amx_bf16``, Arm ``bf16``),
    so ``bf16-mixed`` is faster than fp32 there rather than emulated. Asks torch first
    (``torch.backends.cpu.get_cpu_capability()``, when it names AMX or BF16), then the kernel's
    ``/proc/cpuinfo`` flags; False when neither tells (e.g. macOS)."""
    try:
        capability = str(torch.backends.cpu.get_cpu_capability()).upper()
    except (AttributeError, RuntimeError):
        capability = ""
    if "AMX" in capability or "BF16" in capability:
        return True
    try:
        text = CPUINFO.read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, flags = key.strip().lower(), set(value.split())
        if key == "flags" and flags & set(_CPU_BF16_FLAGS):
            return True
        if key == "features" and "bf16" in flags:  # aarch64 (Armv8.6 BF16, e.g. Graviton3, Neoverse V1/V2)
            return True
    return False


def cuda_has_native_bf16() -> bool:
    """bf16 in hardware (Ampere+), not the emulation ``is_bf16_supported()`` accepts by default."""
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch without the keyword (< 2.3): it checks the hardware then
        return bool(torch.cuda.is_bf16_supported())


def resolve_precision(precision: str, accelerator: str = "auto") -> str:
    """``auto``: bf16-mixed on CUDA GPUs with native bf16, 16-mixed on older CUDA GPUs, bf16-mixed on
    CPUs with native bf16 (:func:`cpu_has_native_bf16`), 32-true elsewhere (other accelerators, older
    CPUs). Any other value is returned unchanged."""
    if precision != "auto":
        return precision
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if cuda_has_native_bf16() else "16-mixed"
    if accelerator in ("auto", "cpu") and cpu_has_native_bf16():
        return "bf16-mixed"
    return "32-true"
