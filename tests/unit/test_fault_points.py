"""The crash points' setting: what it arms, and what it refuses at start."""

from __future__ import annotations

import subprocess
import sys

import pytest

from shared import faults
from shared.settings import SettingsError, load_settings
from tests.unit.test_settings import clean_env  # noqa: F401 (autouse: no variable of ours leaks in)


def test_a_point_is_armed_for_its_nth_time() -> None:
    assert faults.parse("outbox.published, consumer.committed@3") == {
        "outbox.published": 1,
        "consumer.committed": 3,
    }
    assert faults.parse("") == {}


@pytest.mark.parametrize("spec", ["outbox.publish", "consumer.committed@0", "consumer.committed@x"])
def test_a_bad_point_stops_the_start_naming_the_setting(monkeypatch: pytest.MonkeyPatch, spec: str) -> None:
    monkeypatch.setenv("HUIFANG_FAULT_POINTS", spec)
    with pytest.raises(SettingsError, match="HUIFANG_FAULT_POINTS"):
        load_settings()


def reach(spec: str, times: int) -> subprocess.CompletedProcess[str]:
    code = f"from shared import faults\nfaults.arm({spec!r})\nfor _ in range({times}): faults.point('outbox.published')"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_the_process_dies_by_sigkill_the_nth_time_and_not_before() -> None:
    assert reach("outbox.published@3", 2).returncode == 0
    died = reach("outbox.published@3", 3)
    assert died.returncode == -9
    assert '"point": "outbox.published"' in died.stderr


def test_an_unarmed_point_does_nothing() -> None:
    assert reach("consumer.committed", 5).returncode == 0
