"""Settings come from the environment; a wrong value stops the studio with a message instead of a guess."""

import pytest

from studio.settings import Settings


def test_defaults_follow_the_profile(monkeypatch):
    monkeypatch.setenv("STUDIO_DEVICE", "cpu")
    monkeypatch.setenv("STUDIO_PROFILE", "tiny")
    tiny = Settings.from_env()
    assert (tiny.profile, tiny.resolution, tiny.dtype, tiny.preload) == ("tiny", 64, "float32", False)
    monkeypatch.delenv("STUDIO_PROFILE")
    real = Settings.from_env()
    assert (real.profile, real.resolution) == ("real", 512)


@pytest.mark.parametrize("name, value", [("STUDIO_PROFILE", "huge"), ("STUDIO_DTYPE", "float8")])
def test_unknown_values_are_refused_with_the_choices(monkeypatch, name, value):
    monkeypatch.setenv("STUDIO_DEVICE", "cpu")
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit, match=f"{name} must be one of .*{value}"):
        Settings.from_env()


def test_gpu_knobs_default_by_device_and_refuse_what_does_not_pay_off(monkeypatch):
    monkeypatch.setenv("STUDIO_DEVICE", "cpu")
    cpu = Settings.from_env().knobs
    assert (cpu.channels_last, cpu.compile, cpu.vae_tiling) == (False, "off", False)
    monkeypatch.setenv("STUDIO_DEVICE", "cuda")
    monkeypatch.setenv("STUDIO_DEVICE_BUDGET_GB", "10")
    monkeypatch.setenv("STUDIO_VAE_TILING", "1")
    gpu = Settings.from_env().knobs
    assert (gpu.channels_last, gpu.vae_tiling) == (True, True)
    monkeypatch.setenv("STUDIO_COMPILE", "max")
    with pytest.raises(SystemExit, match="STUDIO_COMPILE must be one of off, torch, not 'max'"):
        Settings.from_env()
    monkeypatch.setenv("STUDIO_COMPILE", "torch")
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    with pytest.raises(SystemExit, match="does not pay off on ZeroGPU"):
        Settings.from_env()


def test_a_bf16_cpu_runs_the_real_profile_in_bf16_with_the_vae_in_fp32(monkeypatch):
    import studio.settings as settings

    monkeypatch.setenv("STUDIO_DEVICE", "cpu")
    monkeypatch.setattr(settings, "_cpu_has_bf16", lambda: True)
    real = Settings.from_env()
    assert (real.dtype, real.vae_dtype) == ("bfloat16", "float32")
    monkeypatch.setenv("STUDIO_PROFILE", "tiny")
    assert (Settings.from_env().dtype, Settings.from_env().vae_dtype) == ("float32", "float32")
    monkeypatch.setattr(settings, "_cpu_has_bf16", lambda: False)
    monkeypatch.setenv("STUDIO_PROFILE", "real")
    assert Settings.from_env().dtype == "float32"
