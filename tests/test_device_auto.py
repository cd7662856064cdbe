"""``--device auto``: the machine is profiled once and the profile is cached."""

from __future__ import annotations

from pathlib import Path

from envs.device import list_devices, load_device
from envs.device_auto import auto_device
from envs.runtimes import RUNTIMES


def test_auto_profiles_once_then_reads_the_cached_profile(tmp_path: Path) -> None:
    first = auto_device(tmp_path, rounds=1)
    (written,) = (tmp_path / "devices").glob("auto-*.yaml")
    assert first.runtime in RUNTIMES and first.threads >= 1 and first.batch == 32
    assert "reference CNN" in first.description
    assert auto_device(tmp_path) == first  # read back, not profiled again
    written.write_text(written.read_text().replace("batch: 32", "batch: 7"))
    assert auto_device(tmp_path).batch == 7


def test_auto_is_a_device_name(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(tmp_path))
    profiled = auto_device(tmp_path, rounds=1)
    assert "auto" in list_devices()
    assert load_device("auto") == profiled
