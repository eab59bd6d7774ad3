"""The loyalty agents with Faust's test_context: decode, look up state, call the rules, write."""

from __future__ import annotations

import orjson

from agents.loyalty import process_products, process_purchases, process_users
from app.web.views import customer_document
from core import sample
from core.pricing import history_from_json
from tables import loyalty as tables
from tests.agents.conftest import Sent


def js(value: object) -> bytes:
    return orjson.dumps(value)


async def load_catalogue() -> None:
    """Run the recipe's products through the products agent, then replicate as a worker would."""
    async with process_products.test_context() as agent:
        for event in sample.recipe_events():
            if event.topic == "products":
                await agent.put(js(event.value), key=event.key.encode())
    for product_id, record in tables.catalogue.data.items():
        tables.CATALOGUE.data[product_id] = history_from_json(record["history"])


async def test_products_agent_keeps_the_price_history(sent: Sent) -> None:
    await load_catalogue()
    assert tables.catalogue["coffee"]["history"] == [[1_700_000_002.0, 299],
                                                     [1_700_000_022.0, 305]]
    assert tables.catalogue["coffee"]["category"] == "beverages"
    assert sent.records == []


async def test_purchases_agent_reproduces_the_recipe(sent: Sent) -> None:
    await load_catalogue()
    async with process_users.test_context() as users:
        for event in sample.recipe_events():
            if event.topic == "users":
                await users.put(js(event.value), key=event.key.encode())
    async with process_purchases.test_context() as agent:
        for event in sample.recipe_events():
            if event.topic == "purchases":
                await agent.put(js(event.value), key=event.key.encode())
    for user, total in sample.EXPECTED_TOTALS.items():
        document = customer_document(user)
        assert document is not None
        assert document["total"] == float(total)
        assert document["reward_level"] == sample.EXPECTED_TIERS[user]
        assert document["promotions"] == sample.EXPECTED_CAMPAIGNS[user]
    types = [orjson.loads(v)["type"] for _, v in sent.by_topic("loyalty.events")]
    assert types.count("campaign_qualified") == 2
    assert sent.by_topic("dead-letters") == []


async def test_the_agent_path_queues_state_with_its_output_on_the_bulk_writer(
        sent: Sent) -> None:
    """At least once, off the fast lane, an event's changelog records and its output go to
    the producer's bulk writer, which sends state only once the output is acknowledged (a
    crash between the two must not leave state whose replay is skipped, its output lost)."""
    await load_catalogue()
    async with process_purchases.test_context() as agent:
        await agent.put(js({"user_id": "kris", "product_id": "dog", "ts": 1_700_000_100.0}),
                        key=b"kris", partition=3)
    assert [orjson.loads(v)["type"] for _, v in sent.by_topic("loyalty.events")] == [
        "tier_changed"]
    spend_changelog = tables.spend.changelog_topic.get_topic_name()
    assert (spend_changelog, 3, b"kris") in sent.changelog  # the source partition's


async def test_bad_purchase_is_dead_lettered_and_the_next_one_counts(sent: Sent) -> None:
    await load_catalogue()
    async with process_purchases.test_context() as agent:
        await agent.put(b"{broken", key=b"kris")
        await agent.put(js({"user_id": "kris", "product_id": "coffee", "ts": 1.0e10}),
                        key=b"kris")
    (key, raw), = sent.by_topic("dead-letters")
    letter = orjson.loads(raw)
    assert key == b"kris" and letter["offset"] == 0 and "not valid JSON" in letter["error"]
    assert letter["raw"] == "{broken"
    assert tables.stamps["kris"]["total"] == 1


async def test_user_agent_records_opt_out(sent: Sent) -> None:
    async with process_users.test_context() as agent:
        await agent.put(js({"user_id": "rick", "opt_out": True}), key=b"rick")
    assert tables.profiles["rick"]["opt_out"] is True
    document = customer_document("rick")
    assert document is not None and document["total"] == 0.0


async def test_bad_event_redelivered_after_a_crash_is_dead_lettered_once(sent: Sent) -> None:
    async with process_purchases.test_context() as agent:
        await agent.put(b"{broken", key=b"kris")
    async with process_purchases.test_context() as agent:  # offsets restart: a redelivery
        await agent.put(b"{broken", key=b"kris")
    assert len(sent.by_topic("dead-letters")) == 1


async def test_dead_letter_already_on_the_topic_is_not_sent_again(sent: Sent) -> None:
    """A crash after the dead letter reached the topic but before its mark was written."""
    from tables.deadletters import SENT, mark_key

    SENT[mark_key(process_purchases.channel.get_topic_name(), 0)] = 0
    async with process_purchases.test_context() as agent:
        await agent.put(b"{broken", key=b"kris")
    assert sent.by_topic("dead-letters") == []
