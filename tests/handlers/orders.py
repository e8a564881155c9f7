"""Orders: messages with every shape the registry and code generation must carry over.

Nested structs, optional fields with and without defaults, lists, dicts, tuples, enums
(str and int), literals, a tagged union, a renamed struct, a positional (array_like)
struct and numeric and string constraints. The handlers keep orders in memory (an
entity always runs on the same shard).
"""

from __future__ import annotations

import enum
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from aqnode import Command, Query, entity_type, handles


class Priority(enum.Enum):
    LOW = "low"
    HIGH = "high"


class Level(enum.IntEnum):
    ONE = 1
    TWO = 2


class Money(msgspec.Struct, array_like=True, frozen=True):
    """On the wire as ``[cents, currency]``."""

    cents: Annotated[int, Meta(ge=0)]
    currency: Annotated[str, Meta(min_length=3, max_length=3)] = "EUR"


class Address(msgspec.Struct, rename="camel"):
    street_name: str
    city: str
    postal_code: Annotated[str, Meta(pattern=r"^[0-9]{5}$")]
    country: str = "DE"


class Line(msgspec.Struct, forbid_unknown_fields=True):
    sku: Annotated[str, Meta(min_length=1, max_length=32)]
    quantity: Annotated[int, Meta(ge=1, le=1000)]
    price: Money
    note: str | None = None


class GiftWrap(msgspec.Struct, tag_field="kind", tag="wrap"):
    paper: Literal["red", "gold"]


class GiftCard(msgspec.Struct, tag_field="kind", tag="card"):
    text: Annotated[str, Meta(max_length=200)]


class OrderView(msgspec.Struct):
    order_id: str
    customer: str
    lines: list[Line]
    total: Money
    status: Literal["placed", "cancelled"]
    priority: Priority
    level: Level
    ship_to: Address | None
    tags: dict[str, int]
    history: list[tuple[str, float]]
    gift: GiftWrap | GiftCard | None = None


@entity_type("order", id_field="order_id")
class PlaceOrder(Command[OrderView]):
    order_id: str
    customer: Annotated[str, Meta(min_length=1)]
    lines: Annotated[list[Line], Meta(min_length=1, max_length=50)]
    ship_to: Address | None = None
    priority: Priority = Priority.LOW
    level: Level = Level.ONE
    channel: Literal["web", "phone", "store"] = "web"
    tags: dict[str, int] = {}
    discount: Annotated[float, Meta(ge=0.0, le=0.5)] = 0.0
    gift: GiftWrap | GiftCard | None = None
    coupons: set[str] = set()
    extra: dict[str, list[int]] | None = None


@entity_type("order", id_field="order_id")
class CancelOrder(Command[None]):
    order_id: str
    reason: str = ""


@entity_type("order", id_field="order_id")
class GetOrder(Query[OrderView | None]):
    order_id: str


@entity_type("customer", id_field="customer_id")
class CustomerOrders(Query[list[str]]):
    customer_id: str
    limit: Annotated[int, Meta(ge=1, le=100)] = 10


ORDERS: dict[str, OrderView] = {}  # this shard's orders (an entity stays on its shard)


@handles(PlaceOrder)
async def place_order(msg: PlaceOrder) -> OrderView:
    cents = sum(line.quantity * line.price.cents for line in msg.lines)
    view = OrderView(
        order_id=msg.order_id,
        customer=msg.customer,
        lines=msg.lines,
        total=Money(round(cents * (1 - msg.discount)), msg.lines[0].price.currency),
        status="placed",
        priority=msg.priority,
        level=msg.level,
        ship_to=msg.ship_to,
        tags=msg.tags,
        history=[("placed", 1.5)],
        gift=msg.gift,
    )
    ORDERS[msg.order_id] = view
    return view


@handles(CancelOrder)
async def cancel_order(msg: CancelOrder) -> None:
    view = ORDERS.get(msg.order_id)
    if view is not None:
        ORDERS[msg.order_id] = msgspec.structs.replace(view, status="cancelled")


@handles(GetOrder)
async def get_order(msg: GetOrder) -> OrderView | None:
    return ORDERS.get(msg.order_id)


@handles(CustomerOrders)
async def customer_orders(msg: CustomerOrders) -> list[str]:
    return [f"{msg.customer_id}-{i}" for i in range(msg.limit)]
