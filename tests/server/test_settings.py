from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossway.core.errors import InvalidArgument
from crossway.server.settings import ServerSettings, is_loopback, parse_endpoints


def test_defaults_are_safe_and_valid() -> None:
    settings = ServerSettings()
    settings.check()
    assert settings.port == 7700
    assert settings.bind == "127.0.0.1"
    assert settings.store == "sqlite"
    assert str(settings.data_dir) == ".crossway"
    assert not settings.auth_enabled


@pytest.mark.parametrize("bind", ["0.0.0.0", "::", "10.1.2.3", "example.com", "192.168.0.1"])
def test_public_bind_without_token_is_refused(bind: str) -> None:
    with pytest.raises(InvalidArgument, match=r"refusing to listen on .* without a token"):
        ServerSettings(bind=bind).check()


@pytest.mark.parametrize("bind", ["0.0.0.0", "::"])
def test_public_bind_is_allowed_with_a_token_or_insecure(bind: str) -> None:
    ServerSettings(bind=bind, token="s3cret").check()
    ServerSettings(bind=bind, insecure=True).check()


@pytest.mark.parametrize("bind", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost"])
def test_loopback_binds_need_no_token(bind: str) -> None:
    ServerSettings(bind=bind).check()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"port": 70000}, "--port"),
        ({"port": -1}, "--port"),
        ({"store": "redis"}, "--store must be one of sqlite, memory, etcd"),
        ({"log_level": "loud"}, "--log-level"),
        ({"log_format": "xml"}, "--log-format"),
        ({"token": ""}, "--token"),
        ({"token": " padded "}, "--token"),
        ({"bind": " "}, "--bind"),
        ({"store": "etcd", "etcd_endpoints": ()}, "--etcd-endpoints"),
        ({"store": "etcd", "etcd_endpoints": ("127.0.0.1:2379",)}, "not a URL"),
        ({"shutdown_grace": 0.0}, "shutdown_grace"),
    ],
)
def test_bad_values_are_named(changes: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        ServerSettings(**changes).check()  # type: ignore[arg-type]


def test_parse_endpoints_splits_and_drops_blanks() -> None:
    assert parse_endpoints(" http://a:1, ,http://b:2,") == ("http://a:1", "http://b:2")


@given(st.ip_addresses())
def test_is_loopback_agrees_with_ipaddress(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    assert is_loopback(str(address)) == address.is_loopback


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz.-", min_size=1, max_size=30))
def test_host_names_other_than_localhost_count_as_public(name: str) -> None:
    if name not in ("localhost", "localhost.localdomain"):
        assert not is_loopback(name)
