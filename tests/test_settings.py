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
