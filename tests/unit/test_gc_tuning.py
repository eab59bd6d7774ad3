"""The worker's collector tuning: start-up objects frozen, higher young and middle thresholds."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from app.runtime import gc_tuning


@pytest.fixture
def restored_collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)
    gc.enable()
    gc_tuning._TUNED = False


@pytest.mark.usefixtures("restored_collector")
def test_tune_freezes_start_up_objects_and_raises_the_thresholds() -> None:
    gen2 = gc.get_threshold()[2]
    gc_tuning.tune(12_345)
    assert gc.get_threshold() == (12_345, gc_tuning.GEN1_THRESHOLD, gen2)
    assert gc_tuning.GEN1_THRESHOLD > 10  # Python's default
    assert gc.get_freeze_count() > 0


@pytest.mark.usefixtures("restored_collector")
def test_zero_leaves_the_collector_alone() -> None:
    before = gc.get_threshold()
    gc_tuning.tune(0)
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


@pytest.mark.usefixtures("restored_collector")
def test_a_batch_runs_with_the_collector_paused_once_tuned() -> None:
    with gc_tuning.paused():
        assert gc.isenabled()  # not tuned (tests, tools): left alone
    gc_tuning.tune(12_345)
    with gc_tuning.paused():
        assert not gc.isenabled()
        with gc_tuning.paused():  # nested: the outer one turns it back on
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


@pytest.mark.usefixtures("restored_collector")
def test_the_collector_comes_back_when_a_batch_fails() -> None:
    gc_tuning.tune(12_345)
    with pytest.raises(RuntimeError), gc_tuning.paused():
        raise RuntimeError("a bug in a rule")
    assert gc.isenabled()
