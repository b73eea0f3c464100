"""The shop's pieces in process: settings, the gateway file, the order aggregate, how
step failures are classified, and the supervisor's plan — no processes started."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from examples.shop.contracts import Line, OrderCancelled, OrderConfirmed, OrderPlaced
from examples.shop.gateway import gateway_config
from examples.shop.orders import Order, OrderStatus
from examples.shop.orders.aggregate import OrderStateError
from examples.shop.orders.placement import ParticipantRefused, definitive
from examples.shop.settings import ShopSettings
from examples.shop.supervisor import Supervisor

from shipyard.client import HTTPStatusError, Response, UpstreamConnectionError
from shipyard.core import ConfigError
from shipyard.gateway import parse_config


def settings(tmp_path: Path) -> ShopSettings:
    return ShopSettings.embedded(tmp_path / "var", "consul://127.0.0.1:8500")


def test_settings_travel_to_a_child_process_through_the_environment(tmp_path: Path) -> None:
    original = settings(tmp_path).for_instance(1, consumer=False)
    assert ShopSettings.from_environment(original.environment()) == original


def test_each_service_gets_its_own_database(tmp_path: Path) -> None:
    chosen = settings(tmp_path)
    assert chosen.database_url("orders") != chosen.database_url("users")
    assert chosen.database_url("payment-provider").endswith("/payment_provider.db")


def test_a_missing_setting_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="SHOP_VAR"):
        ShopSettings.from_environment({})


def test_an_unknown_flow_is_refused_when_configured(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="flow"):
        ShopSettings.embedded(tmp_path, "consul://x:1", flow="telepathic")


def test_the_gateway_file_validates_with_the_gateway_itself() -> None:
    config = gateway_config(
        host="127.0.0.1", port=8080, admin_port=9901, admin_token="t" * 12, jwt_secret="s3cret"
    )
    parsed = parse_config(yaml.safe_dump(config))
    frontends = {frontend.name: frontend for frontend in parsed.frontends}
    assert set(frontends) == {"web", "mobile", "site"}
    page = next(r for r in frontends["web"].routes if r.name == "product-page")
    assert page.aggregate is not None
    assert [b.name for b in page.aggregate.backends] == [
        "product",
        "inventory",
        "reviews",
        "recommendations",
    ]
    catalog = next(r for r in frontends["site"].routes if r.name == "catalog")
    assert catalog.strangler is not None
    assert catalog.strangler.shadow is not None


def placed_order() -> Order:
    order = Order("o-1")
    order.place("u-1", [Line("p-001", 2, 100)], 200, "orchestrated")
    return order


def test_a_placed_order_is_pending_with_its_total() -> None:
    order = placed_order()
    assert order.status is OrderStatus.PENDING
    assert order.total_cents == 200
    assert [type(e) for e in order.pending_events] == [OrderPlaced]


def test_confirming_twice_raises_one_event() -> None:
    order = placed_order()
    order.confirm()
    order.confirm()
    assert [type(e) for e in order.pending_events] == [OrderPlaced, OrderConfirmed]


def test_cancelling_twice_raises_one_event_and_keeps_the_first_reason() -> None:
    order = placed_order()
    order.cancel("out of stock")
    order.cancel("again")
    assert [type(e) for e in order.pending_events] == [OrderPlaced, OrderCancelled]
    assert order.reason == "out of stock"


def test_a_confirmed_order_cannot_be_cancelled() -> None:
    order = placed_order()
    order.confirm()
    with pytest.raises(OrderStateError, match="confirmed"):
        order.cancel("too late")


def refusal(status: int) -> HTTPStatusError:
    return Response(status, {}, b"{}").error(0.0)


@pytest.mark.parametrize("status", [402, 409, 422])
def test_a_participants_4xx_is_a_definitive_no(status: int) -> None:
    assert definitive(refusal(status))
    assert definitive(ParticipantRefused("card declined"))


@pytest.mark.parametrize(
    "error",
    [
        refusal(503),
        refusal(500),
        refusal(429),
        refusal(408),
        UpstreamConnectionError("POST", "http://127.0.0.1:1/charges", "refused"),
    ],
)
def test_no_answer_or_a_5xx_leaves_the_step_undecided(error: Exception) -> None:
    assert not definitive(error)


def test_the_supervisor_plans_one_process_per_instance_each_consuming(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path / "var", base_port=9000, instances={"inventory": 3})
    inventory = supervisor.instances("inventory")
    assert [i.id for i in inventory] == ["inventory-1", "inventory-2", "inventory-3"]
    # On the SQLite bus one holds each group's lease, the others stand by.
    assert [i.consumer for i in inventory] == [True, True, True]
    ports = [i.port for i in supervisor.instances() if i.service != "gateway"]
    assert ports == list(range(9000, 9000 + len(ports)))
    assert supervisor.instances()[-1].id == "gateway-1"


def test_every_instance_consumes_when_the_bus_is_jetstream(tmp_path: Path) -> None:
    chosen = ShopSettings(
        var=tmp_path,
        registry="consul://127.0.0.1:8500",
        bus="nats://127.0.0.1:4222",
        database="postgresql://postgres@127.0.0.1/shop_{service}",
    )
    supervisor = Supervisor(tmp_path, base_port=9000, settings=chosen)
    assert all(i.consumer for i in supervisor.instances("inventory"))


def test_the_supervisor_refuses_an_unknown_service(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="instances"):
        Supervisor(tmp_path, instances={"shipping": 2})
