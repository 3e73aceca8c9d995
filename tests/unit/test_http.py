"""Who is asking: the client address behind a trusted reverse proxy, and never a forged one."""

from __future__ import annotations

from ipaddress import ip_network
from unittest import mock

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from crm_backend.http import client_address, trusted_proxies_key
from crm_backend.settings import SettingsError, parse_trusted_proxies


def request_from(peer: str | None, *forwarded_for: str, trusted: str = "") -> web.Request:
    """A request whose TCP peer is `peer`, carrying one X-Forwarded-For header per argument."""
    app = web.Application()
    app[trusted_proxies_key] = parse_trusted_proxies(trusted)
    transport = mock.Mock()
    transport.get_extra_info.return_value = (peer, 40000) if peer is not None else None
    headers = CIMultiDict(("X-Forwarded-For", value) for value in forwarded_for)
    return make_mocked_request("GET", "/console/login", headers=headers, app=app, transport=transport)


def test_without_trusted_proxies_the_peer_is_the_client_whatever_the_header_says() -> None:
    assert client_address(request_from("203.0.113.7", "198.51.100.1")) == "203.0.113.7"


def test_an_untrusted_peer_cannot_choose_its_address_with_the_header() -> None:
    request = request_from("203.0.113.7", "10.0.0.5", trusted="127.0.0.1, 10.0.0.0/8")
    assert client_address(request) == "203.0.113.7"


def test_behind_a_trusted_proxy_the_address_it_saw_is_the_client() -> None:
    assert client_address(request_from("127.0.0.1", "198.51.100.23", trusted="127.0.0.1")) == "198.51.100.23"


def test_a_chain_of_trusted_proxies_is_walked_from_the_right() -> None:
    request = request_from("10.0.0.2", "198.51.100.23, 10.0.0.9, 10.0.0.3", trusted="10.0.0.0/24")
    assert client_address(request) == "198.51.100.23"


def test_left_most_entries_a_client_sent_itself_are_ignored() -> None:
    # The client sent "X-Forwarded-For: 1.1.1.1, 10.0.0.4"; the proxy appended the address it saw.
    request = request_from("127.0.0.1", "1.1.1.1, 10.0.0.4, 203.0.113.9", trusted="127.0.0.1, 10.0.0.0/8")
    assert client_address(request) == "203.0.113.9"


def test_several_header_lines_read_as_one_list() -> None:
    request = request_from("127.0.0.1", "6.6.6.6", "203.0.113.9", trusted="127.0.0.1")
    assert client_address(request) == "203.0.113.9"


def test_ipv6_and_ports_are_understood() -> None:
    assert client_address(request_from("::1", "[2001:db8::1]:4711", trusted="::1")) == "2001:db8::1"
    assert client_address(request_from("::1", "198.51.100.23:4711", trusted="::1/128")) == "198.51.100.23"
    assert client_address(request_from("::ffff:127.0.0.1", "198.51.100.23", trusted="127.0.0.1")) == "198.51.100.23"


@pytest.mark.parametrize(
    "header",
    [
        "",
        " , ",
        "not-an-address",
        "198.51.100.23, garbage",
        "unknown",
        "999.1.1.1",
        "x" * 5000,
    ],
)
def test_a_bad_header_falls_back_to_the_nearest_trusted_hop(header: str) -> None:
    assert client_address(request_from("127.0.0.1", header, trusted="127.0.0.1")) == "127.0.0.1"


def test_a_chain_of_only_trusted_hops_gives_the_farthest_one() -> None:
    assert client_address(request_from("10.0.0.2", "10.0.0.7", trusted="10.0.0.0/8")) == "10.0.0.7"


def test_no_header_behind_a_trusted_proxy_gives_the_proxy() -> None:
    assert client_address(request_from("127.0.0.1", trusted="127.0.0.1")) == "127.0.0.1"


def test_an_unknown_peer_is_an_empty_address() -> None:
    assert client_address(request_from(None, "198.51.100.23", trusted="127.0.0.1")) == ""


def test_an_app_without_the_setting_trusts_nobody() -> None:
    transport = mock.Mock()
    transport.get_extra_info.return_value = ("127.0.0.1", 1)
    request = make_mocked_request(
        "GET", "/", headers={"X-Forwarded-For": "198.51.100.23"}, app=web.Application(), transport=transport
    )
    assert client_address(request) == "127.0.0.1"


def test_trusted_proxies_setting_parses_addresses_and_networks() -> None:
    assert parse_trusted_proxies("") == ()
    assert parse_trusted_proxies(" 127.0.0.1 , 10.0.0.0/8,::1 ,") == (
        ip_network("127.0.0.1/32"),
        ip_network("10.0.0.0/8"),
        ip_network("::1/128"),
    )
    assert parse_trusted_proxies("10.1.2.3/8") == (ip_network("10.0.0.0/8"),)  # host bits forgiven
    with pytest.raises(SettingsError, match="TRUSTED_PROXIES"):
        parse_trusted_proxies("127.0.0.1, proxy.internal")
