"""Training settings chosen from the machine: when bf16 autocast is used on the CPU."""

from __future__ import annotations

from molvae.train import cpu_has_fast_bf16


def test_bf16_autocast_with_amx_or_on_amd_with_avx512_bf16(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx512f avx512_bf16\n")
    assert not cpu_has_fast_bf16(str(info))      # Intel AVX-512 BF16 without AMX: slower than fp32
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx512f avx512_bf16\n")
    assert cpu_has_fast_bf16(str(info))          # Zen 4: 1.58x faster
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2\n")
    assert not cpu_has_fast_bf16(str(info))
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile\n")
    assert cpu_has_fast_bf16(str(info))
    assert not cpu_has_fast_bf16(str(tmp_path / "missing"))
