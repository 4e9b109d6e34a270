"""Machine facts: VNNI read from /proc/cpuinfo flags (canned texts), and ``vfinfer env``."""

from click.testing import CliRunner

from vfinfer.cli import main
from vfinfer.util.machine import cpu_info, int8_facts, parse_cpuinfo, vnni_text

HEADER = ("processor\t: 0\nvendor_id\t: {vendor}\nmodel name\t: {model}\n"
          "cpu MHz\t\t: 2450.000\nflags\t\t: {flags}\n\n"
          "processor\t: 1\nvendor_id\t: {vendor}\nflags\t\t: fpu avx512_vnni avx_vnni\n")
BASE = "fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma"
XEON = HEADER.format(vendor="GenuineIntel", model="Intel(R) Xeon(R) Platinum 8480+",
                     flags=f"{BASE} avx512f avx512bw avx512_vnni amx_int8")
ALDER_LAKE = HEADER.format(vendor="GenuineIntel", model="12th Gen Intel(R) Core(TM) i7-12700",
                           flags=f"{BASE} avx_vnni")
ZEN3 = HEADER.format(vendor="AuthenticAMD", model="AMD EPYC 7763 64-Core Processor",
                     flags=BASE)


def test_avx512_vnni_is_found():
    info = parse_cpuinfo(XEON)
    assert info["vendor"] == "Intel" and info["mhz"] == 2450.0
    assert info["model"] == "Intel(R) Xeon(R) Platinum 8480+"
    facts = int8_facts(info)
    assert facts["vnni"] is True
    assert facts["int8_flags"] == ["avx2", "avx512f", "avx512_vnni", "amx_int8"]
    assert vnni_text(info) == "yes (avx512_vnni)"


def test_avx_vnni_is_found():
    info = parse_cpuinfo(ALDER_LAKE)
    assert int8_facts(info)["vnni"] is True
    assert vnni_text(info) == "yes (avx_vnni)"


def test_no_vnni_when_neither_flag_is_there():
    """Only the first CPU's flags count: the second CPU listed in the canned text has both
    VNNI flags, the first (the one read) has neither."""
    info = parse_cpuinfo(ZEN3)
    assert info["vendor"] == "AMD"
    assert int8_facts(info)["vnni"] is False
    assert int8_facts(info)["int8_flags"] == ["avx2"]
    assert vnni_text(info) == "no"


def test_no_cpuinfo_means_no_flags(tmp_path):
    info = cpu_info(tmp_path / "absent")
    assert info["flags"] == frozenset() and info["mhz"] is None
    assert vnni_text(info) == "no" and not int8_facts(info)["vnni"]


def test_env_prints_whether_vnni_is_present():
    result = CliRunner().invoke(main, ["env"])
    assert result.exit_code == 0, result.output
    lines = {line[:22].strip(): line[22:].strip() for line in result.output.splitlines()}
    assert lines["cpu vnni"] == vnni_text(cpu_info())
    assert lines["cpu vnni"].startswith(("yes (", "no"))
