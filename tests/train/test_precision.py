"""Precision: what ``precision: auto`` resolves to on each kind of hardware, that SSL losses stay in
float32 under bf16 autocast, and that a tiny U-Net trains under CPU bf16 autocast like in fp32."""

from __future__ import annotations

import pytest
import torch

from cardiossp.train import precision
from cardiossp.train.precision import cpu_has_native_bf16, cuda_has_native_bf16, resolve_precision


# ------------------------------------------------------------------------------ resolve_precision
@pytest.mark.parametrize(("cuda", "cuda_bf16", "cpu_bf16", "accelerator", "expected"), [
    (True, True, False, "auto", "bf16-mixed"),
    (True, False, True, "auto", "16-mixed"),  # older GPU: fp16 (the CPU is not used)
    (True, True, True, "gpu", "bf16-mixed"),
    (True, False, False, "cuda", "16-mixed"),
    (False, False, True, "auto", "bf16-mixed"),  # CPU with native bf16 (AVX512_BF16 / AMX)
    (False, False, False, "auto", "32-true"),
    (True, True, True, "cpu", "bf16-mixed"),  # the CPU asked for on a GPU machine
    (True, True, False, "cpu", "32-true"),
    (False, False, True, "gpu", "32-true"),  # no CUDA: Lightning will refuse the accelerator, not us
    (True, True, True, "mps", "32-true"),
])
def test_auto_precision(monkeypatch, cuda, cuda_bf16, cpu_bf16, accelerator, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(precision, "cuda_has_native_bf16", lambda: cuda_bf16)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: cpu_bf16)
    assert resolve_precision("auto", accelerator) == expected
    for explicit in ("32-true", "16-mixed", "bf16-mixed", "64-true"):
        assert resolve_precision(explicit, accelerator) == explicit


def test_cuda_bf16_means_hardware_bf16(monkeypatch):
    calls = []

    def supported(including_emulation: bool = True):
        calls.append(including_emulation)
        return including_emulation  # a pre-Ampere GPU: only emulated

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    assert cuda_has_native_bf16() is False and calls == [False]

    def old_torch():  # no keyword: it checks the hardware
        return True

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", old_torch)
    assert cuda_has_native_bf16() is True


X86_BF16 = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_tile\n"
X86_AMX = "processor\t: 0\nflags\t\t: fpu avx512f amx_bf16 amx_tile amx_int8\n"
X86_OLD = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512bw avx512_vnni\n"
ARM_BF16 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"
ARM_OLD = "processor\t: 0\nFeatures\t: fp asimd crc32 atomics\n"


@pytest.mark.parametrize(("cpuinfo", "expected"), [
    (X86_BF16, True), (X86_AMX, True), (X86_OLD, False), (ARM_BF16, True), (ARM_OLD, False), (None, False)])
def test_cpu_bf16_from_cpuinfo(tmp_path, monkeypatch, cpuinfo, expected):
    path = tmp_path / "cpuinfo"
    if cpuinfo is not None:
        path.write_text(cpuinfo)
    monkeypatch.setattr(precision, "CPUINFO", path)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")  # names no bf16
    assert cpu_has_native_bf16() is expected


def test_cpu_bf16_from_torch_capability(tmp_path, monkeypatch):
    (tmp_path / "cpuinfo").write_text(X86_OLD)
    monkeypatch.setattr(precision, "CPUINFO", tmp_path / "cpuinfo")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AMX_BF16")
    assert cpu_has_native_bf16() is True


def test_cpu_bf16_on_this_machine():
    try:
        flags = set(" ".join(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split())
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    assert cpu_has_native_bf16() is bool(flags & {"avx512_bf16", "amx_bf16"})


# ------------------------------------------------------------------------------ SSL losses in float32
D = 16


def backbone(num_classes: int, deep_supervision: bool):
    from cardiossp.models import build_unet

    return build_unet(1, num_classes, 3, base_features=4, max_features=16, deep_supervision=deep_supervision)


OPTIONS = {
    "simclr": {"proj_hidden_dim": 16, "proj_output_dim": D},
    "pcl": {"proj_hidden_dim": 16, "proj_output_dim": D},
    "dino": {"head_hidden_dim": 16, "head_bottleneck_dim": 8, "head_output_dim": D, "n_local": 1, "epochs": 2,
             "warmup_teacher_temp_epochs": 1},
    "byol": {"proj_hidden_dim": 16, "proj_output_dim": D, "pred_hidden_dim": 16},
}


def make(name: str):
    from cardiossp.ssp import build_method

    torch.manual_seed(0)  # the same method (and a fresh DINO centre) every call
    return build_method(name, backbone, {"input_size": 32, "augment": "none", **OPTIONS[name]})


def features(dtype=torch.float32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    base = torch.randn(8, D, generator=g)
    return [(base + 0.6 * torch.randn(8, D, generator=g)).to(dtype) for _ in range(4)]


def loss_of(name: str, f: list[torch.Tensor]) -> torch.Tensor:
    """The method's loss on given head outputs (what forward_loss computes after its networks)."""
    m = make(name)
    if name in ("simclr", "pcl"):
        return m.contrastive_loss(f[0], f[1], {"position": torch.linspace(0, 1, 8)})
    if name == "dino":
        return m.distillation_loss(f[:2], f[1:], teacher_temp=0.04)
    return m.byol_loss(f[0], f[1], f[2], f[3])


@pytest.mark.parametrize("name", list(OPTIONS))
def test_ssl_loss_under_bf16_autocast_is_the_fp32_loss(name):
    ref = loss_of(name, features())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = loss_of(name, features())  # fp32 features, autocast on
        from_bf16 = loss_of(name, features(torch.bfloat16))  # features a bf16 head would give
    assert amp.dtype == from_bf16.dtype == torch.float32
    assert abs(amp.item() - ref.item()) <= 1e-5
    upcast = loss_of(name, [t.float() for t in features(torch.bfloat16)])  # the same values, in fp32
    assert abs(from_bf16.item() - upcast.item()) <= 1e-5


@pytest.mark.parametrize("name", list(OPTIONS))
def test_forward_loss_under_bf16_autocast_is_float32_and_finite(name):
    m = make(name)
    g = torch.Generator().manual_seed(2)
    sample = {"image": torch.randn(1, 32, 32, generator=g), "position": 0.5, "subject": "s"}
    batch = torch.utils.data.default_collate([m.view_maker(sample) for _ in range(4)])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m.forward_loss(batch, 0.5)
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    out["loss"].backward()


# ------------------------------------------------------------------------------ training under bf16 autocast
def test_tiny_unet_trains_under_cpu_bf16_autocast_like_fp32():
    from cardiossp.models import build_unet
    from cardiossp.train.losses import DiceCELoss

    torch.manual_seed(0)
    init = build_unet(1, 4, 3, base_features=8, max_features=16, deep_supervision=False).state_dict()
    g = torch.Generator().manual_seed(3)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    target = ((yy - 16) ** 2 + (xx - 16) ** 2 < 64).long() + ((yy - 16) ** 2 + (xx - 16) ** 2 < 16).long()
    target = target.expand(4, 1, 32, 32).clone()
    image = target.float() + 0.3 * torch.randn(4, 1, 32, 32, generator=g)

    def run(autocast: bool) -> list[float]:
        net = build_unet(1, 4, 3, base_features=8, max_features=16, deep_supervision=False)
        net.load_state_dict(init)
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        loss_fn, losses = DiceCELoss(), []
        for _ in range(6):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                logits = net(image)
            loss = loss_fn(logits.float(), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses

    fp32, bf16 = run(False), run(True)
    assert all(torch.isfinite(torch.tensor(bf16)))
    assert bf16[-1] < bf16[0]  # it learns
    for a, b in zip(fp32, bf16):
        assert abs(a - b) <= 0.05 * abs(a), (fp32, bf16)
