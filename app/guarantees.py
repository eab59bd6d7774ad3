"""Refuse ``exactly_once`` clearly when the broker cannot do Kafka transactions.

Faust's ``exactly_once`` needs producer ids: its default producer is idempotent and each
partition gets a transactional producer (InitProducerId, AddPartitionsToTxn,
AddOffsetsToTxn/TxnOffsetCommit, EndTxn). The embedded broker (Tansu 0.6.0, memory storage)
answers InitProducerId v0, the only version aiokafka 0.14 sends, with UNKNOWN_SERVER_ERROR
(-1), with or without a transactional id; the worker then dies with a bare ``UnknownError``.
A broker whose transaction coordinator is unavailable (e.g. a one-broker Kafka with the
default replication of the transaction log) makes aiokafka retry forever instead: a hang.

:func:`check_transactions` asks for a transactional producer id once, with a deadline, and
:func:`require_transactions` turns a refusal into :class:`TransactionsUnsupported` with a
message that says what to do. Connect :func:`on_worker_init` to ``app.on_worker_init``: it
runs after autodiscovery and before the app's producer starts, and only checks when the
processing guarantee is ``exactly_once``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError

log = logging.getLogger(__name__)

#: How long the broker may take to hand out a transactional producer id (s).
CHECK_TIMEOUT_S = 15.0


class TransactionsUnsupported(RuntimeError):
    """The broker cannot run Kafka transactions, so ``exactly_once`` cannot work."""


async def check_transactions(
    bootstrap: str, transactional_id: str, auth: dict[str, Any] | None = None,
    timeout_s: float = CHECK_TIMEOUT_S,
) -> str | None:
    """``None`` if the broker gives a transactional producer id, else why not.

    Raises :class:`aiokafka.errors.KafkaConnectionError` when the broker cannot be reached
    at all (that is not an answer about transactions).
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=transactional_id,
                                **(auth or {}))
    started = time.monotonic()
    try:
        await asyncio.wait_for(producer.start(), timeout_s)
    except TimeoutError:
        return f"no transactional producer id after {timeout_s:.0f} s (InitProducerId hangs)"
    except KafkaConnectionError:
        raise
    except KafkaError as exc:
        return (f"InitProducerId failed after {time.monotonic() - started:.2f} s: "
                f"{type(exc).__name__} {exc}")
    finally:
        try:
            await producer.stop()
        except Exception:  # a producer that never started may fail to stop; irrelevant
            log.debug("transaction check: producer stop failed", exc_info=True)
    return None


def require_transactions(bootstrap: str, app_id: str,
                         auth: dict[str, Any] | None = None) -> None:
    """Raise :class:`TransactionsUnsupported` unless the broker can run transactions.

    Safe to call from inside a running event loop (the check runs on its own thread/loop).
    """
    with ThreadPoolExecutor(1, thread_name_prefix="txn-check") as pool:
        try:
            reason = pool.submit(asyncio.run, check_transactions(
                bootstrap, f"{app_id}-transactions-check", auth)).result()
        except KafkaConnectionError as exc:
            log.warning("transaction check skipped, broker unreachable: %s", exc)
            return
    if reason is not None:
        raise TransactionsUnsupported(
            f"PROCESSING_GUARANTEE=exactly_once needs Kafka transactions, and the broker at "
            f"{bootstrap} does not support them ({reason}). Use "
            f"PROCESSING_GUARANTEE=at_least_once (storestream's per-record source offsets "
            f"already make redelivered events change nothing), or point BROKER_URL at a "
            f"Kafka cluster with transactions enabled."
        )
    log.info("broker at %s supports transactions: exactly_once enabled", bootstrap)


def on_worker_init(app: Any, **kwargs: Any) -> None:
    """``app.on_worker_init`` receiver: check transactions when ``exactly_once`` is on."""
    guarantee = app.conf.processing_guarantee
    if getattr(guarantee, "value", guarantee) != "exactly_once":
        return
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    conf = app.conf
    bootstrap = ",".join(f"{url.host}:{url.port or 9092}" for url in conf.broker)
    auth = dict(credentials_to_aiokafka_auth(conf.broker_credentials, conf.ssl_context))
    require_transactions(bootstrap, conf.id, auth)
