from __future__ import annotations

import dataclasses
import ipaddress
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossway.sdk.settings import (
    ClientSettings,
    InvalidSettings,
    guess_address,
    parse_labels,
)


def test_defaults_without_environment() -> None:
    s = ClientSettings.from_env(environ={})
    assert s.url == "http://127.0.0.1:7700"
    assert s.token is None
    assert s.service is None
    assert s.ttl == "10s"
    assert s.ttl_seconds == 10.0
    assert s.cache_dir == Path(".crossway/cache")
    assert s.namespace == "default"
    assert s.labels == {}
    assert s.tags == ()
    ipaddress.ip_address(s.address)  # always a usable IP


def test_environment_is_read() -> None:
    env = {
        "CROSSWAY_URL": "http://cp.local:7700/",
        "CROSSWAY_TOKEN": "s3cret",
        "CROSSWAY_SERVICE": "orders",
        "CROSSWAY_INSTANCE_ID": "orders-a",
        "CROSSWAY_ADDRESS": "10.0.0.7",
        "CROSSWAY_PORT": "8080",
        "CROSSWAY_ZONE": "eu-1",
        "CROSSWAY_LABELS": "version=v2, canary=true",
        "CROSSWAY_TAGS": "v2,blue",
        "CROSSWAY_TTL": "15s",
        "CROSSWAY_CACHE_DIR": "/tmp/cw-cache",
        "CROSSWAY_NAMESPACE": "prod",
        "CROSSWAY_TIMEOUT": "2s",
    }
    s = ClientSettings.from_env(environ=env)
    assert s.url == "http://cp.local:7700"  # trailing slash dropped
    assert (s.token, s.service, s.instance_id) == ("s3cret", "orders", "orders-a")
    assert (s.address, s.port, s.zone) == ("10.0.0.7", 8080, "eu-1")
    assert dict(s.labels) == {"version": "v2", "canary": "true"}
    assert s.tags == ("v2", "blue")
    assert s.ttl_seconds == 15.0
    assert s.cache_dir == Path("/tmp/cw-cache")
    assert s.namespace == "prod"
    assert s.timeout == 2.0


def test_overrides_win_over_environment() -> None:
    env = {"CROSSWAY_SERVICE": "orders", "CROSSWAY_PORT": "8080"}
    s = ClientSettings.from_env(environ=env, service="billing", port=9000)
    assert (s.service, s.port) == ("billing", 9000)


def test_none_override_keeps_environment() -> None:
    s = ClientSettings.from_env(environ={"CROSSWAY_ZONE": "eu-1"}, zone=None)
    assert s.zone == "eu-1"


def test_blank_variables_are_ignored() -> None:
    s = ClientSettings.from_env(environ={"CROSSWAY_PORT": "  ", "CROSSWAY_SERVICE": ""})
    assert s.port is None
    assert s.service is None


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CROSSWAY_SERVICE", "from-env")
    assert ClientSettings.from_env().service == "from-env"


def test_unknown_override_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="servise"):
        ClientSettings.from_env(environ={}, servise="typo")


@pytest.mark.parametrize(
    ("variable", "value", "needle"),
    [
        ("CROSSWAY_PORT", "eighty", "CROSSWAY_PORT"),
        ("CROSSWAY_PORT", "70000", "port"),
        ("CROSSWAY_TTL", "10 parsecs", "ttl"),
        ("CROSSWAY_TTL", "100ms", "between 1s and 24h"),
        ("CROSSWAY_LABELS", "novalue", "CROSSWAY_LABELS"),
        ("CROSSWAY_SERVICE", "bad name", "service"),
        ("CROSSWAY_ZONE", "-eu", "zone"),
        ("CROSSWAY_URL", "cp.local:7700", "url"),
        ("CROSSWAY_TIMEOUT", "soon", "CROSSWAY_TIMEOUT"),
        ("CROSSWAY_WEIGHT", "20000", "weight"),
    ],
)
def test_bad_values_fail_at_once_naming_the_setting(variable: str, value: str, needle: str) -> None:
    with pytest.raises(InvalidSettings, match=needle) as info:
        ClientSettings.from_env(environ={variable: value})
    assert info.value.code == "invalid_settings"
    assert info.value.status == 400


def test_settings_are_immutable() -> None:
    s = ClientSettings(service="orders", labels={"a": "1"}, tags=["x"])  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.service = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        s.labels["a"] = "2"  # type: ignore[index]
    assert s.tags == ("x",)


def test_caller_dict_does_not_leak_into_settings() -> None:
    labels = {"a": "1"}
    s = ClientSettings(labels=labels)
    labels["a"] = "changed"
    assert s.labels["a"] == "1"


def test_default_instance_id_uses_the_current_pid() -> None:
    s = ClientSettings(service="orders")
    assert s.instance_id is None
    resolved = s.resolved_instance_id()
    assert resolved.startswith("orders-")
    assert resolved.endswith(f"-{os.getpid()}")
    assert ClientSettings(service="orders", instance_id="o-1").resolved_instance_id() == "o-1"


def test_default_instance_id_is_a_valid_name_even_for_long_services() -> None:
    s = ClientSettings(service="s" * 128)
    resolved = s.resolved_instance_id()
    assert len(resolved) <= 128
    assert resolved.endswith(f"-{os.getpid()}")
    ClientSettings(service="x", instance_id=resolved)  # validates


def test_guess_address_is_an_ip() -> None:
    address = ipaddress.ip_address(guess_address())
    assert not address.is_unspecified


def test_explicit_address_is_kept() -> None:
    assert ClientSettings(address="192.168.1.5").address == "192.168.1.5"


@given(
    st.dictionaries(
        st.text(alphabet="abcdefgh.-_", min_size=1, max_size=8),
        st.text(alphabet="abcdefgh0123456789.-", max_size=8),
        max_size=5,
    )
)
def test_labels_round_trip(labels: dict[str, str]) -> None:
    text = ",".join(f"{k}={v}" for k, v in labels.items())
    assert parse_labels(text) == labels


@given(st.text(max_size=40))
def test_label_parser_never_crashes(text: str) -> None:
    try:
        parsed = parse_labels(text)
    except ValueError:
        return
    assert all(k and k == k.strip() for k in parsed)
