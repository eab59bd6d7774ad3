"""The returns agent (issue 22): a return takes the purchase back, the tier drops with
``tier_changed``, and what cannot be returned goes to ``dead-letters`` with the reason."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

import agents.loyalty
from agents.loyalty import process_purchases, process_returns
from app.web.views import customer_document
from core.loyalty import LoyaltyRules
from tables import loyalty as tables
from tests.agents.conftest import Sent


def js(value: object) -> bytes:
    return orjson.dumps(value)


def purchase(pid: str, product: str, price: float, ts: float) -> bytes:
    return js({"user_id": "kris", "product_id": product, "price": price, "purchase_id": pid,
               "ts": ts})


def give_back(pid: str, ts: float, amount: float | None = None) -> bytes:
    return js({"user_id": "kris", "purchase_id": pid, "ts": ts,
               **({"amount": amount} if amount is not None else {})})


def event_types(sent: Sent) -> list[str]:
    return [orjson.loads(v)["type"] for _, v in sent.by_topic("loyalty.events")]


async def test_a_return_takes_back_spend_and_stamp_and_announces_the_tier_drop(
        sent: Sent) -> None:
    async with process_purchases.test_context() as agent:
        await agent.put(purchase("c1", "coffee", 3.00, 1.0), key=b"kris")
        await agent.put(purchase("tv1", "tv", 250.00, 2.0), key=b"kris")
    assert event_types(sent) == ["tier_changed"]
    async with process_returns.test_context() as agent:
        await agent.put(give_back("tv1", 3.0), key=b"kris")
        await agent.put(give_back("c1", 4.0, amount=1.00), key=b"kris")
    document = customer_document("kris")
    assert document is not None
    assert document["total"] == 2.0 and document["reward_level"] == "CLIMBING"
    assert document["coffee"]["total"] == 1  # a partial refund keeps the item
    assert event_types(sent) == ["tier_changed", "purchase_returned", "tier_changed",
                                 "purchase_returned"]
    assert tables.spend["kris"]["last_ret"] == 1
    assert sent.by_topic("dead-letters") == []


async def test_unknown_and_already_returned_purchases_are_dead_lettered_with_the_reason(
        sent: Sent) -> None:
    async with process_purchases.test_context() as agent:
        await agent.put(purchase("c1", "coffee", 3.00, 200_000.0), key=b"kris")
    async with process_returns.test_context() as agent:
        await agent.put(give_back("c1", 200_001.0), key=b"kris")
        await agent.put(give_back("c1", 200_002.0), key=b"kris")
        await agent.put(give_back("zz", 1.0), key=b"kris")
        await agent.put(js({"user_id": "kris"}), key=b"kris")
    letters = [orjson.loads(v) for _, v in sent.by_topic("dead-letters")]
    assert [(letter["offset"], letter["error"]) for letter in letters] == [
        (1, "purchase 'c1' already returned"),
        (2, "unknown purchase 'zz'"),
        (3, "missing required field 'purchase_id'"),
    ]
    assert {letter["topic"] for letter in letters} == {"returns"}
    document = customer_document("kris")
    assert document is not None and document["total"] == 0.0


async def test_a_return_before_its_purchase_applies_when_the_purchase_arrives(
        sent: Sent) -> None:
    async with process_returns.test_context() as agent:
        await agent.put(give_back("b1", 10.0), key=b"kris")
        await agent.put(give_back("ghost", 10.0), key=b"kris")
    assert sent.by_topic("dead-letters") == []
    async with process_purchases.test_context() as agent:
        await agent.put(purchase("d1", "dog", 100.00, 5.0), key=b"kris")
        await agent.put(purchase("b1", "beret", 20.00, 6.0), key=b"kris")
        await agent.put(purchase("x1", "tea", 1.00, 100_000.0), key=b"kris")
    document = customer_document("kris")
    assert document is not None
    assert document["total"] == 101.0 and document["promotions"] == {}
    (_, raw), = sent.by_topic("dead-letters")  # 'ghost' never came
    letter = orjson.loads(raw)
    assert letter["topic"] == "returns" and letter["offset"] == 1
    assert letter["error"].startswith("unknown purchase 'ghost'")
    assert orjson.loads(letter["raw"])["purchase_id"] == "ghost"


async def test_with_free_coffee_on_the_sixth_coffee_is_free_on_the_agent_path(
        sent: Sent, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agents.loyalty, "RULES", LoyaltyRules(free_coffee=True))
    async with process_purchases.test_context() as agent:
        for i in range(6):
            await agent.put(purchase(f"c{i}", "coffee", 3.00, float(i)), key=b"kris")
    assert tables.spend["kris"]["settled_cents"] == 1_500
    assert tables.stamps["kris"]["redeemed"] == 1
    assert event_types(sent)[-1] == "free_coffee_redeemed"


async def test_rfm_learnt_from_the_customers_held_and_served_in_the_document(
        sent: Sent, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.web import views
    from core.rfm import RfmBoundaries

    rules = LoyaltyRules(rfm=RfmBoundaries())
    monkeypatch.setattr(agents.loyalty, "RULES", rules)
    monkeypatch.setattr(views, "RULES", rules)
    monkeypatch.setattr(tables.RFM_CUTS, "current", rules.rfm)
    async with process_purchases.test_context() as agent:
        for n in range(10):
            user = f"u{n}"
            await agent.put(js({"user_id": user, "product_id": "tv", "price": 10.0 * (n + 1),
                                "ts": 1.0}), key=user.encode())
    agents.loyalty.learn_rfm(1.0)
    assert tables.RFM_CUTS.current is not None
    assert tables.RFM_CUTS.current.monetary_cents == (2_000, 4_000, 6_000, 8_000)
    top = customer_document("u9")
    assert top is not None and top["rfm"]["monetary"] == 5
    bottom = customer_document("u0")
    assert bottom is not None and bottom["rfm"]["monetary"] == 1


async def test_with_returns_off_a_return_is_dead_lettered_and_nothing_is_remembered(
        sent: Sent, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agents.loyalty, "RULES", LoyaltyRules(return_window_s=0))
    async with process_purchases.test_context() as agent:
        await agent.put(purchase("c1", "coffee", 3.00, 1.0), key=b"kris")
    async with process_returns.test_context() as agent:
        await agent.put(give_back("c1", 2.0), key=b"kris")
    assert "kris" not in tables.ledgers.data
    (_, raw), = sent.by_topic("dead-letters")
    assert orjson.loads(raw)["error"] == "returns are off (RETURN_WINDOW_DAYS=0)"


async def test_a_held_return_given_up_is_dead_lettered_exactly_once_across_crashes(
        sent: Sent) -> None:
    """A held return is given up by a later purchase; its dead letter and the ledger's
    change go to two topics, so a crash may keep either one. Letter out, ledger lost: the
    purchase redelivered gives it up again and the letter, seen on the dead-letters topic,
    is not sent again. Ledger kept, letter lost: the redelivered purchase finds in the
    ledger what it gave up and sends the letter, once. (The fast lane's path.)"""
    from agents.loyalty import apply_purchases, apply_returns
    from app import topics
    from app.runtime.bulk import BulkWriter
    from app.runtime.fastlane import Source
    from tables.batch import TableWrites
    from tables.deadletters import DEAD_LETTERS, RETURN_LETTERS

    returns = topics.returns_topic.get_topic_name()
    purchases = topics.purchases_topic.get_topic_name()
    letters: list[bytes] = []

    async def run(apply: Any, topic: str, offset: int, value: bytes) -> None:
        bulk = BulkWriter()
        await apply([Source(topic, 0, offset, 1.0, b"kris", value)], TableWrites(0, bulk))
        letters.extend(v for (t, _), records in bulk._queued.items()
                       if t == topics.dead_letters_topic.get_topic_name()
                       for _, v, _, _ in records if v is not None)

    def redeliver_t1() -> Any:
        return run(apply_purchases, purchases, 1, purchase("t1", "tea", 1.00, 100_000.0))

    await run(apply_returns, returns, 0, give_back("ghost", 10.0))
    await run(apply_purchases, purchases, 0, purchase("t0", "tea", 1.00, 11.0))
    state = (tables.spend, tables.stamps, tables.baskets, tables.ledgers)
    before = [dict(t.data) for t in state]
    await redeliver_t1()
    (raw,) = letters
    letter = orjson.loads(raw)
    assert (letter["topic"], letter["partition"], letter["offset"]) == (returns, 0, 0)
    assert letter["error"].startswith("unknown purchase 'ghost'")
    after = [dict(t.data) for t in state]

    # 1. The letter reached the topic, the changelog writes did not; a new process reads
    # the dead-letters topic before it resumes, then the purchase is redelivered.
    for table, data in zip(state, before, strict=True):
        table.data.clear()
        table.data.update(data)
    RETURN_LETTERS.clear()
    DEAD_LETTERS.apply(b"kris", raw)
    await redeliver_t1()
    assert letters == [raw]
    assert [dict(t.data) for t in state] == after

    # 2. The changelog writes were kept, the letter was lost; a new process, whose
    # dead-letters topic does not have it, gets the purchase redelivered (twice).
    letters.clear()
    RETURN_LETTERS.clear()
    await redeliver_t1()
    await redeliver_t1()
    assert letters == [raw]
    assert [dict(t.data) for t in state] == after


async def test_the_ledger_is_kept_per_day_and_a_day_past_the_window_is_deleted(
        sent: Sent) -> None:
    day = 86_400.0
    async with process_purchases.test_context() as agent:
        await agent.put(purchase("old", "coffee", 3.00, 0.5 * day), key=b"kris")
        await agent.put(purchase("tv1", "tv", 250.00, 1.5 * day), key=b"kris")
        assert sorted(tables.ledgers.data) == ["kris", "kris\x1f0", "kris\x1f1"]
        assert tables.ledgers.data["kris"]["days"] == "0-1"
        assert list(tables.ledgers.data["kris\x1f1"]["bought"]) == ["tv1"]
        # 40 days on: days 0 and 1 are past the 30-day window (and its day of slack)
        await agent.put(purchase("new", "tea", 2.00, 41.5 * day), key=b"kris")
    assert sorted(tables.ledgers.data) == ["kris", "kris\x1f41"]
    assert tables.ledgers.data["kris"]["days"] == "41"
    async with process_returns.test_context() as agent:
        await agent.put(give_back("tv1", 2.0 * day), key=b"kris")  # forgotten with its day
        await agent.put(give_back("new", 41.7 * day), key=b"kris")
    letters = [orjson.loads(v)["error"] for _, v in sent.by_topic("dead-letters")]
    assert letters == ["unknown purchase 'tv1'"]
    assert tables.ledgers.data["kris\x1f41"]["bought"]["new"][3]  # its refund is recorded
