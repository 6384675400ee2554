"""`auto` generator dtype: bf16 only where the hardware computes it natively."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.engines.dtype import cpu_flags, resolve_generator_dtype

AVX2 = frozenset({"fpu", "sse2", "avx", "avx2", "fma"})
ZEN4 = AVX2 | {"avx512f", "avx512_bf16"}
SAPPHIRE_RAPIDS = AVX2 | {"avx512f", "amx_tile", "amx_bf16"}


@pytest.mark.parametrize(
    ("on_cpu", "flags", "want"),
    [
        (True, AVX2, "float32"),
        (True, ZEN4, "bfloat16"),
        (True, SAPPHIRE_RAPIDS, "bfloat16"),
        (True, frozenset(), "float32"),
        (False, AVX2, "bfloat16"),  # on a GPU the host CPU does not matter
    ],
)
def test_auto_picks_bf16_only_with_native_support(
    on_cpu: bool, flags: frozenset[str], want: str
) -> None:
    assert resolve_generator_dtype("auto", on_cpu, flags) == want


@pytest.mark.parametrize("explicit", ["bfloat16", "float32", "float16"])
def test_an_explicit_dtype_is_kept(explicit: str) -> None:
    assert resolve_generator_dtype(explicit, True, AVX2) == explicit


def test_cpu_flags_reads_the_first_cpu(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512_bf16\n\n"
        "processor\t: 1\nflags\t\t: fpu\n"
    )
    assert cpu_flags(info) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


@pytest.mark.parametrize(
    ("flags", "device", "want"),
    [
        (AVX2, "cpu", "float32"),
        (ZEN4, "cpu", "bfloat16"),
        (AVX2, "cuda", "bfloat16"),
    ],
)
def test_the_trainer_resolves_auto_by_the_same_rule(
    monkeypatch: pytest.MonkeyPatch, flags: frozenset[str], device: str, want: str
) -> None:
    import torch

    from trainer import model

    monkeypatch.setattr(model, "cpu_flags", lambda: flags)
    assert model.resolve_dtype("auto", torch.device(device)) == getattr(torch, want)
    assert model.resolve_dtype("float32", torch.device(device)) == torch.float32
