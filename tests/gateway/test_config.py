"""The configuration loader: typed models, and errors that name file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipyard.core import ConfigError
from shipyard.gateway import GatewayConfigError, load_config, parse_config

VALID = """
listen: 127.0.0.1:8080
services:
  users: {urls: [http://127.0.0.1:9001, http://127.0.0.1:9002], timeout: 2, retries: 1}
frontends:
  web:
    prefix: /web
    routes:
      - {name: user, template: "/users/{id}", methods: [get], service: users}
  mobile:
    listen: 127.0.0.1:8081
    routes:
      - {name: all, prefix: /, upstream: http://127.0.0.1:9003}
"""


def test_a_valid_file_becomes_typed_frozen_models() -> None:
    config = parse_config(VALID)
    web, mobile = config.frontends
    assert web.prefix == "/web"
    assert web.routes[0].methods == frozenset({"GET"})
    assert web.routes[0].kind == "template"
    assert config.services["users"].timeout == 2.0
    assert [u.port for u in config.services["users"].urls] == [9001, 9002]
    assert mobile.listen == ("127.0.0.1", 8081)
    # A static upstream URL becomes a service of its own.
    assert mobile.routes[0].service == "127.0.0.1:9003"


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(VALID)
    assert len(load_config(path).frontends) == 2


@pytest.mark.parametrize(
    ("text", "line", "key", "says"),
    [
        (
            (
                "frontends:\n"
                "  web:\n"
                "    listen: 127.0.0.1:1\n"
                "    routes:\n"
                "      - {prefix: /, upstream: ftp://x}\n"
            ),
            5,
            "frontends.web.routes[0].upstream",
            "http://host:port",
        ),
        (
            (
                "frontends:\n"
                "  web:\n"
                "    listen: nowhere\n"
                "    routes: [{prefix: /, upstream: http://a:1}]\n"
            ),
            3,
            "frontends.web.listen",
            "host:port",
        ),
        (
            (
                "frontends:\n"
                "  web:\n"
                "    listen: 127.0.0.1:1\n"
                "    routes:\n"
                "      - prefix: /\n"
                "        upstream: http://a:1\n"
                "        timout: 3\n"
            ),
            7,
            "frontends.web.routes[0].timout",
            "unknown key",
        ),
        (
            (
                "frontends:\n"
                "  web:\n"
                "    listen: 127.0.0.1:1\n"
                "    routes:\n"
                "      - prefix: /\n"
                "        exact: /x\n"
                "        upstream: http://a:1\n"
            ),
            6,
            "frontends.web.routes[0].exact",
            "exactly one of exact:, prefix:, template:, regex:",
        ),
        (
            (
                "frontends:\n"
                "  web:\n"
                "    listen: 127.0.0.1:1\n"
                "    routes:\n"
                "      - regex: '(['\n"
                "        upstream: http://a:1\n"
            ),
            5,
            "frontends.web.routes[0].regex",
            "valid regular expression",
        ),
        (
            (
                "frontends:\n"
                "  web:\n"
                "    listen: 127.0.0.1:1\n"
                "    jwt:\n"
                "      keys: [{alg: HS256, secret: s}]\n"
                "      leeway: 3600\n"
                "    routes: [{prefix: /, upstream: http://a:1}]\n"
            ),
            6,
            "frontends.web.jwt.leeway",
            "<= 300",
        ),
        (
            (
                "frontends:\n"
                "  web:\n"
                "    listen: 127.0.0.1:1\n"
                "    jwt:\n"
                "      keys: [{alg: none, secret: s}]\n"
                "    routes: [{prefix: /, upstream: http://a:1}]\n"
            ),
            5,
            "frontends.web.jwt.keys[0].alg",
            "HS256, RS256, ES256",
        ),
        (
            (
                "frontends:\n"
                "  web:\n"
                "    listen: 127.0.0.1:1\n"
                "    routes:\n"
                "      - prefix: /\n"
                "        upstream: http://a:1\n"
                "        rate_limit: {rate: -1}\n"
            ),
            7,
            "frontends.web.routes[0].rate_limit.rate",
            "> 0",
        ),
        (
            (
                "limits:\n"
                "  max_headers: 0\n"
                "frontends:\n"
                "  web:\n"
                "    listen: 127.0.0.1:1\n"
                "    routes: [{prefix: /, upstream: http://a:1}]\n"
            ),
            2,
            "limits.max_headers",
            ">= 1",
        ),
        (
            "frontends:\n  web:\n    routes: [{prefix: /, upstream: http://a:1}]\n",
            3,
            "frontends.web.listen",
            "top-level listen",
        ),
        (
            (
                "frontends:\n"
                "  web:\n"
                "    listen: 127.0.0.1:1\n"
                "    routes:\n"
                "      - {prefix: /, service: missing}\n"
            ),
            5,
            "frontends.web.routes[0].service",
            "services:",
        ),
    ],
)
def test_an_invalid_file_names_file_line_key_and_what_is_allowed(
    text: str, line: int, key: str, says: str
) -> None:
    with pytest.raises(GatewayConfigError) as caught:
        parse_config(text, source="gw.yaml")
    message = str(caught.value)
    assert message.startswith(f"gw.yaml:{line}: invalid {key}="), message
    assert says in message
    assert isinstance(caught.value, ConfigError)
    assert isinstance(caught.value, ValueError)


def test_broken_yaml_is_reported_with_its_line() -> None:
    with pytest.raises(GatewayConfigError, match=r"^gw.yaml:4: .*not valid YAML"):
        parse_config("frontends:\n  web:\n    routes: [\n", source="gw.yaml")


def test_the_cli_refuses_an_invalid_file_with_its_location(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from shipyard.cli import main

    path = tmp_path / "gateway.yaml"
    path.write_text("frontends:\n  web:\n    listen: 127.0.0.1:1\n    routes: []\n")
    assert main(["gateway", "--config", str(path)]) == 2
    assert f"{path}:4: invalid frontends.web.routes=" in capsys.readouterr().err


PHASE_2 = """
listen: 127.0.0.1:8080
cache: {store: "redis://127.0.0.1:6379/0", max_bytes: 1048576}
admin: {listen: 127.0.0.1:9901, token: t0k3n}
reload: {watch: true, interval: 1}
services:
  users: {urls: [http://127.0.0.1:9001], retries: 2, retry_budget: {ratio: 0.1}}
  orders: {urls: [http://127.0.0.1:9002]}
frontends:
  web:
    cors: {origins: [https://a.example], credentials: true}
    routes:
      - {name: item, prefix: /items, service: users, cache: {ttl: 30, serve_stale_on_error: 60}}
      - name: page
        template: /page/{id}
        aggregate:
          mode: sequence
          backends:
            - {name: order, service: orders, path: "/orders/{id}", timeout: 0.5}
            - {name: user, service: users, path: "/users/{order.user_id}", fallback: cached}
      - name: shop
        prefix: /shop
        cors: false
        strangler: {legacy: users, new: orders, weight: 10, sticky: {cookie: uid},
                    shadow: {share: 0.5, ignore: [at]}}
"""


def test_phase_2_sections_become_typed_models() -> None:
    config = parse_config(PHASE_2)
    item, page, shop = config.frontends[0].routes
    assert config.cache.store.startswith("redis://")
    assert config.admin is not None
    assert config.admin.token == "t0k3n"
    assert config.reload.watch
    assert config.reload.interval == 1.0
    assert config.services["users"].retry_budget.ratio == 0.1
    assert item.cache is not None
    assert item.cache.serve_stale_on_error == 60.0
    assert item.cors is not None
    assert item.cors.credentials
    assert page.aggregate is not None
    assert page.aggregate.sequential
    assert page.aggregate.backends[1].fallback == "cached"
    assert shop.cors is None
    assert shop.strangler is not None
    assert (shop.strangler.sticky, shop.strangler.sticky_name) == ("cookie", "uid")
    assert shop.strangler.shadow is not None
    assert shop.strangler.shadow.ignore == ("at",)


@pytest.mark.parametrize(
    ("change", "key", "says"),
    [
        ("weight: 10,", "strangler.weight", "<= 100"),
        ("sticky: {cookie: uid}", "strangler.sticky", "consumer, ip"),
        ("service: users, cache: {ttl: 30,", "cache.ttl", "> 0"),
    ],
)
def test_phase_2_errors_name_the_key(change: str, key: str, says: str) -> None:
    broken = {
        "weight: 10,": "weight: 150,",
        "sticky: {cookie: uid}": "sticky: {query: uid}",
        "service: users, cache: {ttl: 30,": "service: users, cache: {ttl: 0,",
    }[change]
    with pytest.raises(GatewayConfigError) as info:
        parse_config(PHASE_2.replace(change, broken))
    assert key in str(info.value)
    assert says in str(info.value)


def test_a_route_has_exactly_one_target() -> None:
    text = PHASE_2.replace("prefix: /shop\n", "prefix: /shop\n        service: users\n")
    with pytest.raises(GatewayConfigError, match="exactly one of service:, upstream:"):
        parse_config(text)
