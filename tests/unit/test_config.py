"""Settings: faust.ini defaults, environment overrides, declarative campaigns."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.campaigns import DEFAULT_CAMPAIGNS
from core.config import ConfigError, load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_faust_ini_defaults_reproduce_the_recipe() -> None:
    settings = load_settings({"STORESTREAM_CONFIG": str(ROOT / "faust.ini")})
    assert settings.broker_url == "kafka://localhost:9092"
    assert settings.web_bind == "127.0.0.1" and settings.web_port == 6066
    assert settings.web_token is None
    assert settings.loyalty.tiers.gold_cents == 40_000
    assert settings.loyalty.stamps.product_id == "coffee" and settings.loyalty.stamps.cycle == 6
    assert {c.name: c for c in settings.loyalty.campaigns} == {
        c.name: c for c in DEFAULT_CAMPAIGNS
    }
    assert settings.offer_radius_m == 0.9144 and settings.offer_cooldown_s == 1800
    assert settings.gc_gen0_threshold == 10_000
    assert settings.shutdown_grace_s == 25
    assert settings.consumer_max_fetch_size == 4 * 1024 * 1024
    assert settings.reference_fetch_interval_ms == 100
    assert settings.offer_backstop_ms == 1000 and settings.direct_push


def test_environment_overrides_the_file() -> None:
    settings = load_settings({
        "STORESTREAM_CONFIG": str(ROOT / "faust.ini"), "BROKER_URL": "kafka://k1:9093",
        "WEB_PORT": "7000", "WEB_TOKEN": "t", "TOPIC_PARTITIONS": "8", "APP_STORE": "rocksdb://",
        "OFFER_RADIUS_M": "2.5", "TOPIC_PREFIX": "x.", "GC_GEN0_THRESHOLD": "0",
        "REFERENCE_FETCH_INTERVAL_MS": "0", "OFFER_BACKSTOP_MS": "0", "SHUTDOWN_GRACE_S": "0",
    })
    assert settings.offer_backstop_ms == 0 and not settings.direct_push
    assert settings.shutdown_grace_s == 0
    assert settings.gc_gen0_threshold == 0 and settings.reference_fetch_interval_ms == 0
    assert settings.topics.reference == {"x.products", "x.users", "x.stores.products",
                                         "x.products.promotions"}
    assert (settings.broker_url, settings.web_port, settings.web_token) == (
        "kafka://k1:9093", 7000, "t")
    assert settings.topic_partitions == 8 and settings.store == "rocksdb://"
    assert settings.offer_radius_m == 2.5 and settings.topics.purchases == "x.purchases"


def test_campaigns_and_tiers_come_from_the_ini(tmp_path: Path) -> None:
    ini = tmp_path / "faust.ini"
    ini.write_text("[tiers]\ngold = 1000.50\nsilver = 500\nbronze = 100\n"
                   "[stamps]\nproduct = tea\ncycle = 10\n"
                   "[campaign pet_lover]\nwatch = dog, cat\nrequire = dog, cat\nmin_spend = 300\n")
    settings = load_settings({"STORESTREAM_CONFIG": str(ini)})
    assert settings.loyalty.tiers.gold_cents == 100_050
    assert settings.loyalty.stamps.product_id == "tea" and settings.loyalty.stamps.cycle == 10
    (campaign,) = settings.loyalty.campaigns
    assert campaign.name == "pet_lover" and campaign.min_spend_cents == 30_000


@pytest.mark.parametrize("env", [
    {"PROCESSING_GUARANTEE": "maybe"}, {"APP_STORE": "redis://"}, {"TOPIC_PARTITIONS": "0"},
    {"WEB_PORT": "http"}, {"OFFER_RADIUS_M": "-1"}, {"GC_GEN0_THRESHOLD": "-5"},
    {"CONSUMER_MAX_FETCH_SIZE": "0"}, {"REFERENCE_FETCH_INTERVAL_MS": "-1"},
    {"REFERENCE_FETCH_INTERVAL_MS": "60001"}, {"OFFER_BACKSTOP_MS": "-1"},
    {"REDEMPTION_WINDOW_S": "-1"}, {"REDEMPTION_WINDOW_S": "inf"},
    {"CONTROL_GROUP_PCT": "-1"}, {"CONTROL_GROUP_PCT": "101"}, {"MAX_ACCURACY_M": "-2"},
    {"SHUTDOWN_GRACE_S": "-1"}, {"SHUTDOWN_GRACE_S": "inf"},
])
def test_bad_settings_are_refused_with_a_message(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        load_settings({"STORESTREAM_CONFIG": str(ROOT / "faust.ini"), **env})


@pytest.mark.parametrize("env", [
    {"FAST_LANE": "off"}, {"PROCESSING_GUARANTEE": "exactly_once"},
])
def test_offers_are_not_pushed_directly_outside_the_fast_lane(env: dict[str, str]) -> None:
    settings = load_settings({"STORESTREAM_CONFIG": str(ROOT / "faust.ini"), **env})
    assert settings.offer_backstop_ms == 1000 and not settings.direct_push


def test_campaign_requiring_an_unwatched_product_is_refused(tmp_path: Path) -> None:
    ini = tmp_path / "faust.ini"
    ini.write_text("[campaign broken]\nwatch = dog\nrequire = cat\n")
    with pytest.raises(ConfigError, match="broken"):
        load_settings({"STORESTREAM_CONFIG": str(ini)})


def test_consumer_runs_on_the_worker_loop_unless_asked_for_a_thread() -> None:
    ini = str(ROOT / "faust.ini")
    assert not load_settings({"STORESTREAM_CONFIG": ini}).consumer_thread
    assert load_settings({"STORESTREAM_CONFIG": ini, "CONSUMER_THREAD": "on"}).consumer_thread


def test_producer_idempotence_is_off_unless_turned_on() -> None:
    ini = str(ROOT / "faust.ini")
    assert not load_settings({"STORESTREAM_CONFIG": ini}).producer_idempotence
    assert load_settings({"STORESTREAM_CONFIG": ini,
                          "PRODUCER_IDEMPOTENCE": "on"}).producer_idempotence


def test_recovery_probe_is_on_unless_turned_off() -> None:
    ini = str(ROOT / "faust.ini")
    assert load_settings({"STORESTREAM_CONFIG": ini}).recovery_probe
    assert not load_settings({"STORESTREAM_CONFIG": ini, "RECOVERY_PROBE": "off"}).recovery_probe


def test_recovery_bulk_is_on_unless_turned_off() -> None:
    ini = str(ROOT / "faust.ini")
    assert load_settings({"STORESTREAM_CONFIG": ini}).recovery_bulk
    assert not load_settings({"STORESTREAM_CONFIG": ini, "RECOVERY_BULK": "off"}).recovery_bulk


def test_redemptions_count_for_two_hours_after_an_offer_unless_told_otherwise() -> None:
    ini = str(ROOT / "faust.ini")
    assert load_settings({"STORESTREAM_CONFIG": ini}).redemption_window_s == 7200
    assert load_settings({"STORESTREAM_CONFIG": ini, "REDEMPTION_WINDOW_S": "0"}
                         ).redemption_window_s == 0


def test_nobody_is_held_out_and_no_position_is_too_inaccurate_by_default() -> None:
    settings = load_settings({"STORESTREAM_CONFIG": str(ROOT / "faust.ini")})
    assert settings.control_group_pct == 0 and settings.max_accuracy_m == 0


def test_caps_and_store_settings_come_from_the_ini(tmp_path: Path) -> None:
    ini = tmp_path / "faust.ini"
    ini.write_text("[offers]\nmax_offers_per_visit = 2\nmax_offers_per_day = 5\n"
                   "visit_gap_s = 900\n\n[store s1]\ntimezone = Europe/London\n"
                   "quiet_hours = 21:00-08:00, 12:00-12:30\n")
    settings = load_settings({"STORESTREAM_CONFIG": str(ini)})
    assert (settings.caps.per_visit, settings.caps.per_day, settings.caps.visit_gap_s) == (
        2, 5, 900.0)
    (store,) = settings.stores
    assert store.store_id == "s1" and store.timezone == "Europe/London"
    assert len(store.quiet_hours) == 2
    ini.write_text("[store s2]\ntimezone = Mars/Olympus\n")
    with pytest.raises(ConfigError, match="store s2"):
        load_settings({"STORESTREAM_CONFIG": str(ini)})
    ini.write_text("[store s3]\nquiet_hours = late\n")
    with pytest.raises(ConfigError, match="store s3"):
        load_settings({"STORESTREAM_CONFIG": str(ini)})
    with pytest.raises(ConfigError):
        load_settings({"STORESTREAM_CONFIG": str(ROOT / "faust.ini"), "VISIT_GAP_S": "0"})


def test_no_cap_and_no_store_settings_by_default() -> None:
    settings = load_settings({"STORESTREAM_CONFIG": str(ROOT / "faust.ini")})
    assert not settings.caps.active and settings.stores == ()
