"""skipdecode/cpu.py: the CPU facts behind --mixed-precision auto and calibrate --reduce-range auto."""

import pytest

from skipdecode.cpu import cpu_flags, int8_saturates


@pytest.mark.parametrize("flags, machine, saturates", [
    ({"avx2", "fma"}, "x86_64", True),                     # AVX2 alone (e.g. AMD Zen 3): vpmaddubsw's int16 sums
    ({"avx512f", "avx512bw"}, "x86_64", True),             # AVX-512 without VNNI saturates too
    ({"avx2", "avx512_vnni"}, "x86_64", False),
    ({"avx2", "avx_vnni"}, "AMD64", False),
    ({"amx_int8", "avx512_vnni"}, "x86_64", False),
    (set(), "x86_64", True),                               # unreadable flags: the safe side
    ({"asimd", "asimddp"}, "aarch64", False),              # ARM's dot products do not saturate
])
def test_int8_saturates_where_ort_u8s8_kernels_have_no_vnni(flags, machine, saturates):
    assert int8_saturates(flags, machine=machine) is saturates


def test_this_machines_answer_follows_its_flags():
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("x86 only")
    assert int8_saturates() is not bool({"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags())


@pytest.mark.parametrize("text, name", [
    ("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nflags\t\t: avx2\n", "AMD EPYC 7B13"),
    ("processor\t: 0\nBogoMIPS\t: 50.00\nHardware\t: BCM2835\n", "BCM2835"),
    ("processor\t: 0\nmodel name\t:\nHardware\t: X\n", "X"),     # an empty model name is no name
])
def test_cpu_model_reads_the_name_reports_cite(tmp_path, text, name):
    from skipdecode.cpu import cpu_model

    (tmp_path / "cpuinfo").write_text(text)
    assert cpu_model(tmp_path / "cpuinfo") == name


def test_cpu_model_falls_back_to_the_platform_without_cpuinfo(tmp_path):
    import platform

    from skipdecode.cpu import cpu_model

    assert cpu_model(tmp_path / "missing") == (platform.processor() or platform.machine())
