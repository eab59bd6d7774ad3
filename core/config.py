"""Settings: ``faust.ini`` for non-secret defaults, environment variables on top.

Frozen and built once at start-up; nothing here imports faust.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from core.campaigns import Campaign
from core.caps import Caps, StoreSettings, parse_quiet_hours
from core.loyalty import LoyaltyRules
from core.money import to_cents
from core.partitioners import PARTITIONERS
from core.repartition import DEFAULT_MODE, parse_mode
from core.repartition import ENV_NAMES as REPARTITION_ENV_NAMES
from core.rfm import RfmBoundaries
from core.stamps import StampCard
from core.tiers import TierThresholds

REPO_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A setting that cannot be used."""


@dataclass(frozen=True, slots=True)
class Topics:
    """Names of every topic storestream reads or writes."""

    prefix: str = ""

    def name(self, base: str) -> str:
        """A topic name with the deployment's prefix."""
        return f"{self.prefix}{base}"

    @property
    def products(self) -> str:
        return self.name("products")

    @property
    def users(self) -> str:
        return self.name("users")

    @property
    def purchases(self) -> str:
        return self.name("purchases")

    @property
    def returns(self) -> str:
        return self.name("returns")

    @property
    def displays(self) -> str:
        return self.name("stores.products")

    @property
    def promotions(self) -> str:
        return self.name("products.promotions")

    @property
    def locations(self) -> str:
        return self.name("customers.locations")

    @property
    def offers(self) -> str:
        return self.name("customers.promotions")

    @property
    def redemptions(self) -> str:
        return self.name("offers.redemptions")

    @property
    def held_out(self) -> str:
        return self.name("offers.held_out")

    @property
    def presence(self) -> str:
        return self.name("displays.presence")

    @property
    def associates(self) -> str:
        return self.name("associates.alerts")

    @property
    def loyalty_events(self) -> str:
        return self.name("loyalty.events")

    @property
    def dead_letters(self) -> str:
        return self.name("dead-letters")

    @property
    def reference(self) -> frozenset[str]:
        """Reference data (catalogue, profiles, displays, promotions): read by every worker,
        changing rarely, never waited on by a shopper."""
        return frozenset((self.products, self.users, self.displays, self.promotions))


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a worker needs to know, resolved from ``faust.ini`` and the environment."""

    app_id: str = "storestream"
    broker_url: str = "kafka://localhost:9092"
    redis_url: str = "redis://localhost:6379/0"
    web_port: int = 6066
    web_bind: str = "127.0.0.1"
    web_token: str | None = None
    store: str = "memory://"
    datadir: str = "data"
    topic_partitions: int = 4
    #: Replication factor of the topics ``faust -A app topics`` (or a worker) creates.
    topic_replication: int = 1
    #: Whether a worker creates missing topics at start (else it exits naming them).
    topic_create: bool = True
    #: How producers hash record keys to partitions (:mod:`core.partitioners`): routing of
    #: web queries, the partition of every keyed record produced, misplaced-record checks.
    key_partitioner: str = "murmur2"
    processing_guarantee: str = "at_least_once"
    ably_api_key: str | None = None
    offer_radius_m: float = 0.9144
    offer_cooldown_s: float = 1800.0
    #: How long after an offer a purchase of it counts as a redemption (0: no attribution).
    redemption_window_s: float = 7200.0
    #: Percent of shoppers (by a stable hash of the uid) held out of every offer.
    control_group_pct: float = 0.0
    #: Positions less accurate than this (``accuracy_m``) never trigger offers (0: no limit).
    max_accuracy_m: float = 0.0
    #: Frequency caps across promotions (0: none) and the gap that ends a visit.
    caps: Caps = Caps()
    #: Stores' own settings (``[store ID]`` sections): time zone, quiet hours.
    stores: tuple[StoreSettings, ...] = ()
    #: Tiers whose arrival in a store its associates hear of (empty: none).
    associate_tiers: tuple[str, ...] = ("GOLD",)
    fetch_wait_ms: int = 500
    consumer_max_fetch_size: int = 4 * 1024 * 1024
    producer_max_batch_size: int = 256 * 1024
    reference_fetch_interval_ms: int = 100
    offer_backstop_ms: int = 1000
    fast_lane: bool = True
    consumer_thread: bool = False
    #: acks=all and an idempotent producer outside transactions too (PRODUCER_IDEMPOTENCE).
    producer_idempotence: bool = False
    gc_gen0_threshold: int = 10_000
    broker_session_timeout_s: float = 6.0
    #: Longest a stopping worker takes before it exits anyway (``0``: no limit, Faust's own).
    shutdown_grace_s: float = 25.0
    #: Whether recovery reads past each changelog end offset the broker reports
    #: (``app/runtime/recovery.py``: Tansu reports them too low).
    recovery_probe: bool = True
    #: Whether recovery reads the active changelog partitions with a bulk reader of its own
    #: (``app/runtime/recovery.py``) before Faust's per-event path (which then has nothing left).
    recovery_bulk: bool = True
    #: Input topic base name (``purchases``, ``stores.products``...) -> ``REPARTITION`` mode
    #: (:mod:`core.repartition`); a topic not named has :data:`core.repartition.DEFAULT_MODE`.
    repartition: tuple[tuple[str, str], ...] = ()
    topics: Topics = Topics()
    loyalty: LoyaltyRules = LoyaltyRules()

    @property
    def direct_push(self) -> bool:
        """Whether the matcher pushes its offers itself, the offers topic's consumer being
        the backstop read once per ``offer_backstop_ms``: only with the fast lane, which
        never runs in a transaction (an aborted offer must not have been pushed)."""
        return (self.offer_backstop_ms > 0 and self.fast_lane
                and self.processing_guarantee == "at_least_once")


def _ini_path(env: Mapping[str, str]) -> Path | None:
    explicit = env.get("STORESTREAM_CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"STORESTREAM_CONFIG={explicit!r} is not a file")
        return path
    for candidate in (Path.cwd() / "faust.ini", REPO_ROOT / "faust.ini"):
        if candidate.is_file():
            return candidate
    return None


def _switch(value: str) -> bool:
    text = value.strip().lower()
    if text in ("on", "true", "yes", "1"):
        return True
    if text in ("off", "false", "no", "0"):
        return False
    raise ConfigError(f"expected on or off, got {value!r}")


def _rfm(mode: str, section: Mapping[str, str], env: Mapping[str, str]
         ) -> tuple[RfmBoundaries | None, bool]:
    """``RFM`` (off, on: configured boundaries, learn: quintiles of the population) and the
    boundaries ``RFM_RECENCY_DAYS``, ``RFM_FREQUENCY``, ``RFM_MONETARY`` (currency units)."""
    mode = mode.strip().lower()
    if mode in ("off", ""):
        return None, False
    if mode not in ("on", "learn"):
        raise ConfigError(f"RFM must be off, on or learn, got {mode!r}")
    defaults = RfmBoundaries()

    def cuts(env_name: str, key: str, default: tuple[float, float, float, float],
             scale: int = 1) -> tuple[float, float, float, float]:
        text = env.get(env_name) or section.get(key)
        if not text:
            return default
        try:
            values = tuple(float(to_cents(part.strip())) if scale == 100 else float(part)
                           for part in text.split(","))
        except ValueError as exc:  # MoneyError too
            raise ConfigError(f"{env_name}: {exc}") from exc
        if len(values) != 4:
            raise ConfigError(f"{env_name} must be four comma-separated numbers, got {text!r}")
        return values[0], values[1], values[2], values[3]

    try:
        boundaries = RfmBoundaries(
            cuts("RFM_RECENCY_DAYS", "rfm_recency_days", defaults.recency_days),
            cuts("RFM_FREQUENCY", "rfm_frequency", defaults.frequency),
            cuts("RFM_MONETARY", "rfm_monetary", defaults.monetary_cents, 100))
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return boundaries, mode == "learn"


def _names(value: str) -> frozenset[str]:
    return frozenset(part.strip() for part in value.split(",") if part.strip())


def _campaigns(parser: configparser.ConfigParser) -> tuple[Campaign, ...] | None:
    sections = [s for s in parser.sections() if s.startswith("campaign ")]
    if not sections:
        return None
    campaigns = []
    for section in sections:
        body = parser[section]
        min_spend = body.get("min_spend", "").strip()
        try:
            campaigns.append(Campaign(
                name=section.removeprefix("campaign ").strip(),
                watch=_names(body.get("watch", "")),
                require=_names(body.get("require", "")),
                exclude=_names(body.get("exclude", "")),
                min_spend_cents=to_cents(min_spend) if min_spend else None,
            ))
        except ValueError as exc:
            raise ConfigError(f"[{section}]: {exc}") from exc
    return tuple(campaigns)


def _stores(parser: configparser.ConfigParser) -> tuple[StoreSettings, ...]:
    stores = []
    for section in parser.sections():
        if not section.startswith("store "):
            continue
        body = parser[section]
        try:
            stores.append(StoreSettings(
                store_id=section.removeprefix("store ").strip(),
                timezone=body.get("timezone", "UTC").strip() or "UTC",
                quiet_hours=parse_quiet_hours(body.get("quiet_hours", "")),
            ))
        except (ValueError, KeyError) as exc:  # zoneinfo: ZoneInfoNotFoundError is a KeyError
            raise ConfigError(f"[{section}]: {exc}") from exc
    return tuple(stores)


def repartition_mode(settings: Settings, base: str) -> str:
    """The ``REPARTITION`` mode of an input topic (its base name, without prefix)."""
    return dict(settings.repartition).get(base, DEFAULT_MODE)


def repartition_modes(env: Mapping[str, str],
                      section: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """``REPARTITION`` (ini ``repartition``) for every input topic, then the per-topic
    overrides ``REPARTITION_<NAME>`` (ini ``repartition_<name>``), e.g.
    ``REPARTITION_PURCHASES=all``."""
    def given(env_name: str, key: str) -> str | None:
        value = env.get(env_name)
        if value is None or value == "":
            value = section.get(key)
        return None if value is None or value == "" else str(value)

    try:
        default = parse_mode(given("REPARTITION", "repartition") or DEFAULT_MODE)
        modes: list[tuple[str, str]] = []
        for base, suffix in REPARTITION_ENV_NAMES.items():
            env_name = f"REPARTITION_{suffix}"
            value = given(env_name, env_name.lower())
            modes.append((base, default if value is None else parse_mode(value, env_name)))
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return tuple(modes)


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build settings from ``faust.ini`` (if found) with environment overrides."""
    env = os.environ if env is None else env
    parser = configparser.ConfigParser()
    path = _ini_path(env)
    if path is not None:
        parser.read(path)
    main = parser["storestream"] if parser.has_section("storestream") else {}
    offers = parser["offers"] if parser.has_section("offers") else {}
    tiers = parser["tiers"] if parser.has_section("tiers") else {}
    stamps = parser["stamps"] if parser.has_section("stamps") else {}
    defaults = Settings()

    def pick(env_name: str, section: Mapping[str, str], key: str, default: object) -> str:
        value = env.get(env_name)
        if value is None or value == "":
            value = section.get(key)
        return str(default) if value is None else str(value)

    try:
        rfm_cuts, rfm_learn = _rfm(pick("RFM", tiers, "rfm", "off"), tiers, env)
        rules = LoyaltyRules(
            tiers=TierThresholds(
                gold_cents=to_cents(tiers.get("gold", "400")),
                silver_cents=to_cents(tiers.get("silver", "300")),
                bronze_cents=to_cents(tiers.get("bronze", "200")),
            ),
            stamps=StampCard(
                product_id=stamps.get("product", "coffee").strip(),
                cycle=int(stamps.get("cycle", "6")),
            ),
            campaigns=_campaigns(parser) or defaults.loyalty.campaigns,
            lateness_s=float(pick("PRICE_LATENESS_S", main, "price_lateness_s", 86400)),
            return_window_s=86_400.0 * float(pick("RETURN_WINDOW_DAYS", main,
                                                  "return_window_days", 30)),
            free_coffee=_switch(pick("FREE_COFFEE", stamps, "free_coffee", "off")),
            tier_window_days=int(pick("TIER_WINDOW_DAYS", tiers, "window_days", 0)),
            tier_grace_days=float(pick("TIER_GRACE_DAYS", tiers, "grace_days", 0)),
            rfm=rfm_cuts,
            rfm_learn=rfm_learn,
            rfm_refresh_s=float(pick("RFM_REFRESH_S", tiers, "rfm_refresh_s", 3600)),
        )
        if rules.tier_window_days < 0 or rules.tier_grace_days < 0:
            raise ConfigError("TIER_WINDOW_DAYS and TIER_GRACE_DAYS must be 0 or more")
        if rules.return_window_s < 0:
            raise ConfigError("RETURN_WINDOW_DAYS must be 0 or more")
        guarantee = pick("PROCESSING_GUARANTEE", main, "processing_guarantee", "at_least_once")
        if guarantee not in ("at_least_once", "exactly_once"):
            raise ConfigError(f"PROCESSING_GUARANTEE must be at_least_once or exactly_once, "
                              f"got {guarantee!r}")
        store = pick("APP_STORE", main, "store", defaults.store)
        if not store.startswith(("memory://", "rocksdb://")):
            raise ConfigError(f"APP_STORE must be memory:// or rocksdb://, got {store!r}")
        settings = Settings(
            app_id=pick("APP_ID", main, "app_id", defaults.app_id),
            broker_url=pick("BROKER_URL", main, "broker_url", defaults.broker_url),
            redis_url=pick("REDIS_URL", main, "redis_url", defaults.redis_url),
            web_port=int(pick("WEB_PORT", main, "web_port", defaults.web_port)),
            web_bind=pick("WEB_BIND", main, "web_bind", defaults.web_bind),
            web_token=env.get("WEB_TOKEN") or None,
            store=store,
            datadir=pick("APP_DATADIR", main, "datadir", defaults.datadir),
            topic_partitions=int(pick("TOPIC_PARTITIONS", main, "topic_partitions", 4)),
            topic_replication=int(pick("TOPIC_REPLICATION", main, "topic_replication",
                                       defaults.topic_replication)),
            topic_create=_switch(pick("TOPIC_CREATE", main, "create_topics", "on")),
            key_partitioner=pick("KEY_PARTITIONER", main, "key_partitioner",
                                 defaults.key_partitioner).strip().lower(),
            processing_guarantee=guarantee,
            ably_api_key=env.get("ABLY_API_KEY") or None,
            offer_radius_m=float(pick("OFFER_RADIUS_M", offers, "radius_m", 0.9144)),
            offer_cooldown_s=float(pick("OFFER_COOLDOWN_S", offers, "cooldown_s", 1800)),
            redemption_window_s=float(pick("REDEMPTION_WINDOW_S", offers,
                                           "redemption_window_s", 7200)),
            control_group_pct=float(pick("CONTROL_GROUP_PCT", offers, "control_group_pct", 0)),
            max_accuracy_m=float(pick("MAX_ACCURACY_M", offers, "max_accuracy_m", 0)),
            caps=Caps(
                per_visit=int(pick("MAX_OFFERS_PER_VISIT", offers, "max_offers_per_visit", 0)),
                per_day=int(pick("MAX_OFFERS_PER_DAY", offers, "max_offers_per_day", 0)),
                visit_gap_s=float(pick("VISIT_GAP_S", offers, "visit_gap_s", 1800)),
            ),
            stores=_stores(parser),
            associate_tiers=tuple(sorted(_names(pick(
                "ASSOCIATE_TIERS", offers, "associate_tiers", "GOLD").upper()))),
            fetch_wait_ms=int(pick("FETCH_WAIT_MS", main, "fetch_wait_ms",
                                   defaults.fetch_wait_ms)),
            consumer_max_fetch_size=int(pick(
                "CONSUMER_MAX_FETCH_SIZE", main, "consumer_max_fetch_size",
                defaults.consumer_max_fetch_size)),
            producer_max_batch_size=int(pick(
                "PRODUCER_MAX_BATCH_SIZE", main, "producer_max_batch_size",
                defaults.producer_max_batch_size)),
            reference_fetch_interval_ms=int(pick(
                "REFERENCE_FETCH_INTERVAL_MS", main, "reference_fetch_interval_ms",
                defaults.reference_fetch_interval_ms)),
            offer_backstop_ms=int(pick("OFFER_BACKSTOP_MS", offers, "backstop_ms",
                                       defaults.offer_backstop_ms)),
            fast_lane=_switch(pick("FAST_LANE", main, "fast_lane", "on")),
            consumer_thread=_switch(pick("CONSUMER_THREAD", main, "consumer_thread", "off")),
            producer_idempotence=_switch(pick("PRODUCER_IDEMPOTENCE", main,
                                              "producer_idempotence", "off")),
            gc_gen0_threshold=int(pick("GC_GEN0_THRESHOLD", main, "gc_gen0_threshold",
                                       defaults.gc_gen0_threshold)),
            broker_session_timeout_s=float(
                pick("BROKER_SESSION_TIMEOUT_S", main, "broker_session_timeout_s", 6)
            ),
            shutdown_grace_s=float(pick("SHUTDOWN_GRACE_S", main, "shutdown_grace_s",
                                        defaults.shutdown_grace_s)),
            recovery_probe=_switch(pick("RECOVERY_PROBE", main, "recovery_probe", "on")),
            recovery_bulk=_switch(pick("RECOVERY_BULK", main, "recovery_bulk", "on")),
            repartition=repartition_modes(env, main),
            topics=Topics(prefix=pick("TOPIC_PREFIX", main, "topic_prefix", "")),
            loyalty=rules,
        )
    except (ValueError, KeyError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"bad setting: {exc}") from exc
    if settings.consumer_max_fetch_size < 1024:
        raise ConfigError("CONSUMER_MAX_FETCH_SIZE must be >= 1024 bytes (and at least the "
                          "largest record)")
    if not 0 <= settings.reference_fetch_interval_ms <= 60_000:
        raise ConfigError("REFERENCE_FETCH_INTERVAL_MS must be 0 (every fetch) to 60000")
    if not 0 <= settings.offer_backstop_ms <= 60_000:
        raise ConfigError("OFFER_BACKSTOP_MS must be 0 (no direct push) to 60000")
    if not 0 <= settings.shutdown_grace_s < float("inf"):
        raise ConfigError("SHUTDOWN_GRACE_S must be >= 0 seconds (0: no limit)")
    if settings.gc_gen0_threshold < 0:
        raise ConfigError("GC_GEN0_THRESHOLD must be >= 0 (0: Python's default collector)")
    if settings.key_partitioner not in PARTITIONERS:
        raise ConfigError(f"KEY_PARTITIONER must be one of {', '.join(PARTITIONERS)}, "
                          f"got {settings.key_partitioner!r}")
    if settings.topic_partitions < 1:
        raise ConfigError("TOPIC_PARTITIONS must be >= 1")
    if settings.topic_replication < 1:
        raise ConfigError("TOPIC_REPLICATION must be >= 1 (and at most the number of brokers)")
    if settings.offer_radius_m <= 0 or settings.offer_cooldown_s < 0:
        raise ConfigError("OFFER_RADIUS_M must be > 0 and OFFER_COOLDOWN_S >= 0")
    if not 0 <= settings.redemption_window_s < float("inf"):
        raise ConfigError("REDEMPTION_WINDOW_S must be >= 0 seconds (0: no attribution)")
    if not 0 <= settings.control_group_pct <= 100:
        raise ConfigError("CONTROL_GROUP_PCT must be a percentage of shoppers, 0 to 100")
    if not 0 <= settings.max_accuracy_m < float("inf"):
        raise ConfigError("MAX_ACCURACY_M must be >= 0 metres (0: no limit)")
    unknown = set(settings.associate_tiers) - {"CLIMBING", "BRONZE", "SILVER", "GOLD"}
    if unknown:
        raise ConfigError(f"ASSOCIATE_TIERS: unknown tier {', '.join(sorted(unknown))}")
    caps = settings.caps
    if caps.per_visit < 0 or caps.per_day < 0 or not 0 < caps.visit_gap_s < float("inf"):
        raise ConfigError("MAX_OFFERS_PER_VISIT and MAX_OFFERS_PER_DAY must be >= 0 (0: no "
                          "cap) and VISIT_GAP_S > 0")
    return settings
