"""Bad input never stops the stream: malformed events are dead-lettered, valid ones count once."""

from __future__ import annotations

import pytest

from core.poison import KINDS, poison_pills
from tests.integration.harness import Deployment, wait_for

pytestmark = pytest.mark.integration


def test_malformed_events_go_to_dead_letters_and_valid_ones_count_once(
    each_path: Deployment,
) -> None:
    deployment = each_path
    worker = deployment.start_worker("w1")
    worker.wait_ready()
    deployment.produce([("products", "tea", {"product_id": "tea", "price": 2.55, "ts": 1.0})])
    wait_for("the catalogue", lambda: worker.metric("storestream_replica_applied_total") >= 1, 30)

    records: list[tuple[str, bytes | str | None, bytes | dict[str, object]]] = []
    bad_kinds: list[str] = []
    for round_ in range(3):
        for pill in poison_pills(round_):
            records.append(("purchases", "alice",
                            {"user_id": "alice", "product_id": "tea", "ts": 10.0 + round_}))
            records.append((pill.topic, pill.key, pill.value))
            bad_kinds.append(pill.kind)
    placed = deployment.produce_placed(records)
    bad_positions = {placed[i] for i in range(1, len(records), 2)}
    assert len(bad_positions) == len(bad_kinds) == 3 * len(KINDS)

    letters = deployment.read_topic("dead-letters", expect=len(bad_kinds), timeout=60)
    assert len(letters) == len(bad_kinds)
    assert {(d["topic"], d["partition"], d["offset"]) for d in letters} == bad_positions
    assert all(d["error"] for d in letters)
    reasons = " | ".join(d["error"] for d in letters)
    for expected in ("not valid JSON", "expected a JSON object", "empty value",
                     "missing required field 'product_id'", "must be >= 0",
                     "value too large", "does not match user_id", "utf-8"):
        assert expected in reasons

    valid = len(records) // 2
    wait_for("valid purchases counted", lambda: worker.get("/customers/alice/")[1].get(
        "total") == round(valid * 2.55, 2), 30)
    status, alice = worker.get("/customers/alice/")
    assert status == 200 and alice["unpriced_purchases"] == 0
    assert worker.metric("storestream_dead_letters_total") == len(bad_kinds)
    assert worker.metric("storestream_events_total", outcome="ok") == valid + 1
    assert worker.process.poll() is None
    log = worker.log_path.read_text(errors="replace")
    assert "Traceback" not in log and "crashed" not in log.lower()
