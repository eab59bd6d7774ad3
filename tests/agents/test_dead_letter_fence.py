"""A dead letter held back by a worker unsure of its membership (``app.outcomes``): every
later bad record of the same partition is held back with it until the next generation, so
that the partition's dead-letter mark (its highest offset dead-lettered) never passes a
record whose letter was not sent."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from faust.types import TP, Message

import app as storestream
from app import outcomes
from app.outcomes import DEAD_LETTER, FENCED, dead_letter_once
from app.runtime import fastlane
from app.runtime.fastlane import Source
from app.runtime.membership import Membership
from app.topics import purchases_topic
from tests.agents.conftest import Sent

pytestmark = pytest.mark.timeout(30)

SESSION_S = 6.0


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch, sent: Sent) -> Iterator[Clock]:
    """A watched membership on a test clock; a generation; nothing held back yet."""
    app = storestream.app
    clock = Clock()
    monkeypatch.setattr(outcomes, "MEMBERSHIP", Membership(clock=clock, watching=True))
    monkeypatch.setattr(app.conf, "broker_session_timeout", SESSION_S)
    monkeypatch.setattr(app, "consumer_generation_id", 4)
    monkeypatch.setattr(app, "rebalancing", False)
    monkeypatch.setattr(outcomes, "_HELD_BACK", {})
    fastlane.take_held()
    yield clock
    fastlane.take_held()


def bad(partition: int, offset: int) -> Source:
    return Source("purchases", partition, offset, 0.0, b"ann", b"not json")


async def dead_letter(source: Source) -> str:
    """``dead_letter_once`` as a lane calls it: as the event of its record."""
    with fastlane.current_event(fastlane.event_of(storestream.app, source)):
        return await dead_letter_once(source, "not JSON")


def letters(sent: Sent) -> int:
    return len(sent.by_topic("dead-letters"))


async def test_a_dead_letter_is_held_back_when_a_rebalance_begins_without_a_heartbeat(
        clock: Clock, sent: Sent, monkeypatch: pytest.MonkeyPatch) -> None:
    clock.now += SESSION_S + 1  # the last heartbeat answered is older than the session
    monkeypatch.setattr(storestream.app, "rebalancing", True)
    assert await dead_letter(bad(1, 311)) == FENCED
    assert letters(sent) == 0
    assert fastlane.take_held() == {311}  # not acknowledged: read again after the rebalance


async def test_a_later_dead_letter_of_that_partition_is_held_back_too_even_once_answered(
        clock: Clock, sent: Sent, monkeypatch: pytest.MonkeyPatch) -> None:
    clock.now += SESSION_S + 1
    monkeypatch.setattr(storestream.app, "rebalancing", True)
    assert await dead_letter(bad(1, 311)) == FENCED
    outcomes.MEMBERSHIP.heartbeat_ok()  # answered meanwhile, the rebalance still on
    assert await dead_letter(bad(1, 326)) == FENCED
    assert letters(sent) == 0
    assert fastlane.take_held() == {311, 326}
    # another partition's dead letters are not concerned
    assert await dead_letter(bad(2, 400)) == DEAD_LETTER
    assert letters(sent) == 1


async def test_the_held_record_is_dead_lettered_when_read_again_in_the_next_generation(
        clock: Clock, sent: Sent, monkeypatch: pytest.MonkeyPatch) -> None:
    clock.now += SESSION_S + 1
    monkeypatch.setattr(storestream.app, "rebalancing", True)
    assert await dead_letter(bad(1, 311)) == FENCED
    monkeypatch.setattr(storestream.app, "rebalancing", False)
    monkeypatch.setattr(storestream.app, "consumer_generation_id", 5)
    outcomes.MEMBERSHIP.heartbeat_ok()  # the join of generation 5 answered
    assert await dead_letter(bad(1, 311)) == DEAD_LETTER
    assert await dead_letter(bad(1, 326)) == DEAD_LETTER
    assert letters(sent) == 2


async def test_an_earlier_record_than_the_one_held_back_is_still_dead_lettered(
        clock: Clock, sent: Sent, monkeypatch: pytest.MonkeyPatch) -> None:
    """Held back at 326: a letter for 311 (e.g. another batch's, sent before) passes no
    record left unsent."""
    clock.now += SESSION_S + 1
    monkeypatch.setattr(storestream.app, "rebalancing", True)
    assert await dead_letter(bad(1, 326)) == FENCED
    outcomes.MEMBERSHIP.heartbeat_ok()
    assert await dead_letter(bad(1, 311)) == DEAD_LETTER
    assert letters(sent) == 1


async def test_a_message_held_back_off_the_fast_lane_is_never_acknowledged(
        clock: Clock, sent: Sent, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent path (``FAST_LANE=off``) gets Faust messages: Faust acknowledges each one
    after its event, so a held one is marked so that it never is in this generation."""
    consumer = storestream.app.consumer
    tp = TP(purchases_topic.get_topic_name(), 1)
    message = Message(tp.topic, tp.partition, 311, 0.0, 0, {}, b"ann", b"not json", None,
                      tp=tp, generation_id=4)
    consumer.track_message(message)  # delivered to its stream, awaiting its ack
    clock.now += SESSION_S + 1
    monkeypatch.setattr(storestream.app, "rebalancing", True)
    assert await dead_letter_once(message, "not JSON") == FENCED
    assert not consumer.ack(message)
    assert 311 not in consumer._acked_index[tp]
    assert message not in consumer._unacked_messages  # a rebalance does not wait for it
    assert letters(sent) == 0
