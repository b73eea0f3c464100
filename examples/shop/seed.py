"""Demo data: the catalogue, customers, stock and reviews every fresh shop starts with.

The legacy monolith and the products service are seeded from the same catalogue, as after
a data migration, so routes moved from one to the other answer identically.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Product:
    """A catalogue entry."""

    id: str
    name: str
    price_cents: int
    category: str
    description: str

    @property
    def thumbnail(self) -> str:
        """A small image URL (served by nobody: the demo has no images)."""
        return f"/img/{self.id}-thumb.jpg"


@dataclass(frozen=True, slots=True)
class Customer:
    """A customer account."""

    id: str
    name: str
    email: str


PRODUCTS: tuple[Product, ...] = (
    Product("p-001", "Rope, 20 m", 2_450, "rigging", "Three-strand manila rope."),
    Product("p-002", "Brass compass", 8_900, "navigation", "Gimballed, oil damped."),
    Product("p-003", "Deck shoes", 6_500, "apparel", "Non-marking siped soles."),
    Product("p-004", "Life jacket", 7_999, "safety", "150 N, automatic inflation."),
    Product("p-005", "Sea chart, North Sea", 2_200, "navigation", "Waterproof paper."),
    Product("p-006", "Oilskin jacket", 18_900, "apparel", "Offshore grade."),
    Product("p-007", "Shackle set", 1_250, "rigging", "Stainless, six sizes."),
    Product("p-008", "Binoculars 7x50", 24_900, "navigation", "With bearing compass."),
    Product("p-009", "Flare kit", 5_400, "safety", "Coastal pack, in date."),
    Product("p-010", "Fenders (4)", 3_600, "mooring", "Inflatable, navy blue."),
    Product("p-011", "Mooring line", 2_900, "mooring", "Braided polyester, 10 m."),
    Product("p-012", "Bosun's knife", 1_990, "rigging", "With marlinspike."),
)

POPULAR: tuple[str, ...] = ("p-004", "p-002", "p-006", "p-010")
"""Best sellers: what recommendations fall back to when the live service is down."""

CUSTOMERS: tuple[Customer, ...] = (
    Customer("u-1", "Ada Lovelace", "ada@example.org"),
    Customer("u-2", "Grace Hopper", "grace@example.org"),
    Customer("u-3", "Jean Bartik", "jean@example.org"),
    Customer("u-4", "Alan Turing", "alan@example.org"),
    Customer("u-5", "Edsger Dijkstra", "edsger@example.org"),
    Customer("declined-1", "Card Declined", "declined@example.org"),
)
"""Customers whose id starts with ``declined`` have their card declined by the provider."""

INITIAL_STOCK = 1_000
"""Units of each product in stock in a fresh shop."""

REVIEWS: tuple[tuple[str, str, int, str], ...] = tuple(
    (product.id, customer.id, 3 + (i + j) % 3, f"{product.name}: as described.")
    for i, product in enumerate(PRODUCTS)
    for j, customer in enumerate(CUSTOMERS[:3])
)
"""(product id, author id, stars, text)."""


def product(product_id: str) -> Product | None:
    """The demo product ``product_id``."""
    for item in PRODUCTS:
        if item.id == product_id:
            return item
    return None


def legacy_catalog_entry(item: Product) -> dict[str, object]:
    """A product as the legacy monolith's catalogue page shows it (and, for the moved
    route, as the products service must keep showing it)."""
    return {
        "sku": item.id,
        "title": item.name,
        "price": f"{item.price_cents // 100}.{item.price_cents % 100:02d}",
        "currency": "EUR",
        "category": item.category,
    }
