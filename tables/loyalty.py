"""Loyalty tables, mirroring the recipe: catalogue prices, spend/tier, coffee stamps, baskets."""

from __future__ import annotations

import orjson

from app.faust_app import app
from app.runtime.replica import TopicReplica
from app.settings import SETTINGS
from core.changelog import record_offsets
from core.pricing import PriceHistory, history_from_json
from core.rfm import RfmBoundaries
from tables.base import text_keyed_table

#: product_id -> {"category", "history": [[ts, cents], ...]}; every worker holds all of it.
# Written by the products agent on the worker that owns the product's partition; every worker
# reads it through CATALOGUE, a replica of the whole changelog (see app.runtime.replica for why
# not a GlobalTable).
catalogue = text_keyed_table(app.Table, "catalogue", "Catalogue price history per product",
                             newest_by_offsets=record_offsets)
CATALOGUE: TopicReplica[PriceHistory] = TopicReplica(
    catalogue.changelog_topic.get_topic_name(),
    lambda raw: history_from_json(orjson.loads(raw).get("history")),
)

#: user_id -> core.loyalty.Spend as JSON (the recipe's sales_totals).
spend = text_keyed_table(app.Table, "spend", "Spend, pending purchases, announced tier",
                         newest_by_offsets=record_offsets)

#: user_id -> core.loyalty.Stamps as JSON (the recipe's caffeine_index).
stamps = text_keyed_table(app.Table, "stamps", "Coffee stamps per customer",
                          newest_by_offsets=record_offsets)

#: user_id -> core.loyalty.Basket as JSON (the recipe's promotion_* tables).
baskets = text_keyed_table(app.Table, "baskets", "Watched products bought, campaigns announced",
                           newest_by_offsets=record_offsets)

#: user_id -> core.returns.Ledger as JSON: returnable purchases, held returns (issue 22).
ledgers = text_keyed_table(app.Table, "ledgers", "Returnable purchases and held returns",
                           newest_by_offsets=record_offsets)

#: user_id -> {"name", "opt_out", "last_offset"}.
profiles = text_keyed_table(app.Table, "profiles", "Customer profile and consent",
                            newest_by_offsets=record_offsets)


def price_history(product_id: str) -> PriceHistory:
    """The catalogue price history of a product (empty when never seen), on any worker."""
    return CATALOGUE.get(product_id) or ()


def catalogue_version() -> int:
    """Changes whenever the catalogue replica applies a record: what a customer's pending
    purchases came to stays valid while it does not (agents.loyalty.PRICED)."""
    return CATALOGUE.applied



class RfmCuts:
    """The RFM boundaries in use on this worker: the configured ones, replaced periodically
    by quintiles of the customers it holds with ``RFM=learn`` (``agents.loyalty``)."""

    def __init__(self, configured: RfmBoundaries | None) -> None:
        self.current = configured
        self.learnt_at: float | None = None


RFM_CUTS = RfmCuts(SETTINGS.loyalty.rfm)
