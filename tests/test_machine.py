"""The machine facts every run's done.json and train.log carry: CPU name with family / model, threads, GPUs."""

from cardiossp.machine import cpu_name, machine_facts, machine_summary

X86 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC
flags\t\t: fpu avx2

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 23
model\t\t: 49
model name\t: AMD EPYC 7B12
"""

ARM = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd bf16
CPU implementer\t: 0x41
CPU part\t: 0xd40
"""


def test_x86_names_carry_family_and_model_of_the_first_processor():
    # "AMD EPYC" alone names Zen 2, 3 and 4 virtual machines alike; the family / model tells them apart
    assert cpu_name(X86) == "AMD EPYC (family 25 model 1)"


def test_a_cpuinfo_without_model_name_falls_back_to_the_platform():
    name = cpu_name(ARM)
    assert name and "family" not in name
    assert cpu_name("") == cpu_name(ARM)


def test_facts_are_json_ready_and_summarised_on_one_line(one_thread):
    facts = machine_facts()
    assert set(facts) == {"cpu", "cpus", "torch_threads", "cpu_native_bf16", "gpus"}
    assert facts["torch_threads"] == 1 and facts["cpus"] >= 1 and isinstance(facts["gpus"], list)
    line = machine_summary(facts)
    assert line.startswith(facts["cpu"]) and "1 torch threads" in line and "\n" not in line
    gpu = machine_summary({**facts, "cpu_native_bf16": True, "gpus": ["NVIDIA A100-SXM4-40GB"]})
    assert "native bf16" in gpu and "no native" not in gpu and gpu.endswith("GPUs: NVIDIA A100-SXM4-40GB")
