"""What /health says a worker that is not ready waits for (app/web/readiness.py)."""

from __future__ import annotations

import asyncio
from collections import Counter
from types import SimpleNamespace
from typing import Any, NamedTuple

from app.web.readiness import waiting_for


class TP(NamedTuple):
    topic: str
    partition: int


class FakeConsumer:
    def __init__(self, assigned: set[str]) -> None:
        self.assigned = assigned

    def assignment(self) -> set[str]:
        return self.assigned


def fake_app(*, rebalancing: bool = False, completed: bool = False, in_recovery: bool = False,
             assigned: bool = False, remaining: dict[Any, int] | None = None,
             owners: dict[Any, str] | None = None) -> Any:
    event = asyncio.Event()
    if completed:
        event.set()
    recovery = SimpleNamespace(
        completed=event, in_recovery=in_recovery,
        active_remaining=lambda: Counter(remaining or {}),
        tp_to_table={tp: SimpleNamespace(name=name) for tp, name in (owners or {}).items()},
    )
    return SimpleNamespace(rebalancing=rebalancing, tables=SimpleNamespace(recovery=recovery),
                           _consumer=FakeConsumer({"tp"} if assigned else set()))


def test_a_worker_joining_its_group_waits_for_assignment_and_replicas() -> None:
    assert waiting_for(fake_app(), ["t.dead-letters"]) == [
        "partition assignment", "replica t.dead-letters"]


def test_recovering_tables_are_named_once_each() -> None:
    tp1, tp2, tp3 = (TP(f"c{i}", 0) for i in range(3))
    app = fake_app(in_recovery=True, assigned=True, remaining={tp1: 5, tp2: 3, tp3: 0},
                   owners={tp1: "spend", tp2: "spend", tp3: "stamps"})
    assert waiting_for(app, ["catalogue-changelog"]) == [
        "recovery of table spend", "replica catalogue-changelog"]


def test_a_rebalance_after_start_is_named() -> None:
    app = fake_app(rebalancing=True, completed=True, assigned=True)
    assert waiting_for(app, []) == ["partition assignment"]


def test_there_is_always_a_reason() -> None:
    assert waiting_for(fake_app(in_recovery=True, assigned=True), []) == ["table recovery"]
    assert waiting_for(fake_app(completed=True, assigned=True), []) == ["processing to start"]
    assert waiting_for(fake_app(assigned=True), []) == ["processing to start"]
