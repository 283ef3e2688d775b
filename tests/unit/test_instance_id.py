"""Each replica's consumer-group member name (static membership) is stable across restarts and unique."""

from __future__ import annotations

import socket

from shared.settings import Settings


def test_the_default_names_the_service_host_and_port() -> None:
    settings = Settings(huifang_outcomes_port=18002)
    assert settings.instance_id("outcomes") == f"outcomes-{socket.gethostname()}-18002"
    assert settings.instance_id("outcomes") != Settings(huifang_outcomes_port=18012).instance_id("outcomes")


def test_the_setting_wins_and_each_service_gets_its_own() -> None:
    settings = Settings(huifang_instance_id="pod-7")
    assert [settings.instance_id(s) for s in ("scheduler", "notifier")] == ["scheduler-pod-7", "notifier-pod-7"]


def test_a_consumer_that_is_no_service_joins_as_a_dynamic_member() -> None:
    assert Settings().instance_id("relay-test") is None
