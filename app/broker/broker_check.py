"""A worker with a wrong Kafka password or CA stops at once, saying so in one line.

Without this check, a worker whose SASL login or TLS verification fails exits after ~3 s
with Faust's traceback ``KafkaConnectionError: Unable to bootstrap from [...]``; the cause is
only in an aiokafka log line above it. :func:`check_access` connects to the bootstrap
servers the way every client of the worker does (same ``security_protocol``, SASL settings and
TLS context): it opens one connection, which does the TLS handshake, the ApiVersions request
and the SASL login, and closes it.

* It succeeds on the first server that lets it in.
* A refusal that retrying cannot fix (the SASL login is rejected, the broker's certificate is
  not trusted or not for that host, the mechanism is not enabled, the port does not speak TLS)
  is a :class:`BrokerAccessDenied` whose message is one line naming the setting to fix
  (:func:`failure_message`, pure, unit-tested).
* Anything else (connection refused, timeouts, a broker closing the connection while it
  starts) means the broker is not there yet: the check tries again every second for up to
  ``wait_s`` and then gives up quietly, leaving the worker to start as it would without it.

:func:`on_worker_init` runs the check from ``app.on_worker_init`` for the ``worker`` command
when the connection is secured (SASL and/or TLS); a refusal ends the process with
``SystemExit(message)``: the line on stderr and exit status 1. Logging is not configured yet
when it runs, so its warnings are complete sentences prefixed ``storestream:`` (Python's
last-resort handler writes them to stderr). No faust import at module level.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import re
import ssl
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import errors as kafka_errors
from aiokafka.conn import create_conn

log = logging.getLogger(__name__)

#: ``KAFKA_SASL_MECHANISM`` values storestream accepts (aiokafka's user/password logins).
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
#: How long a broker that does not answer yet is waited for at start (s).
WAIT_S = 30.0
#: Bound of one connection attempt: TCP connect, TLS handshake, ApiVersions, SASL login (s).
ATTEMPT_TIMEOUT_S = 10.0
#: Pause between rounds of attempts while no broker answers (s).
RETRY_S = 1.0

#: OpenSSL verification codes (``X509_V_ERR_*``) this module words on its own.
_CERT_NOT_YET_VALID = 9
_CERT_HAS_EXPIRED = 10
_HOSTNAME_MISMATCH = 62
_IP_ADDRESS_MISMATCH = 64
#: TLS errors that mean the connection went away mid-handshake (a broker starting or
#: stopping), not a configuration mistake.
_TRANSIENT_SSL = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError,
                  ssl.SSLWantReadError, ssl.SSLWantWriteError)
#: aiokafka's errors for a SASL login the broker rejected.
_LOGIN_REJECTED = (kafka_errors.SaslAuthenticationFailed, kafka_errors.AuthenticationFailedError)
#: Faust's top-level options that take a value (to find the command in ``argv``).
_VALUE_OPTIONS = frozenset({"-A", "--app", "-W", "--workdir", "-D", "--datadir", "-L", "--loop",
                            "-f", "--logfile", "-l", "--loglevel", "--blocking-timeout",
                            "--console-port"})
#: Set once the check ran in this process (Faust may load the app twice).
_checked = False


class BrokerAccessDenied(RuntimeError):
    """The broker refused this worker in a way retrying cannot fix (message: one line)."""


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it was raised from, outermost first (a few levels at most)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 5:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def failure_message(
    exc: BaseException, *, broker: str, username: str | None = None,
    mechanism: str | None = None, cafile: str | None = None, password_set: bool = True,
) -> str | None:
    """One line saying why ``broker`` (``host:port``) refused us and what to fix, or ``None``
    when ``exc`` is not such a refusal (broker down, network trouble: worth retrying).

    ``username``, ``mechanism``, ``cafile`` and ``password_set`` are the worker's settings
    (``KAFKA_SASL_USERNAME``, ``KAFKA_SASL_MECHANISM``, ``KAFKA_SSL_CAFILE``, whether
    ``KAFKA_SASL_PASSWORD`` is set), for the message only.
    """
    for cause in _causes(exc):
        reason = _refusal(cause, broker=broker, username=username, mechanism=mechanism,
                          cafile=cafile, password_set=password_set)
        if reason is not None:
            return f"storestream: cannot connect to Kafka at {broker}: {reason}"
    return None


def _refusal(exc: BaseException, *, broker: str, username: str | None, mechanism: str | None,
             cafile: str | None, password_set: bool) -> str | None:
    mechanism = mechanism or "PLAIN"
    if isinstance(exc, _LOGIN_REJECTED):
        why = ("KAFKA_SASL_PASSWORD is not set" if not password_set
               else "wrong password or unknown user")
        return (f"SASL authentication failed for user {username!r} with {mechanism} ({why}; "
                f"check KAFKA_SASL_USERNAME/KAFKA_SASL_PASSWORD)")
    if isinstance(exc, kafka_errors.UnsupportedSaslMechanismError):
        offered = re.search(r"Enabled mechanisms are: \[?([^\]]*)\]?", str(exc))
        names = offered.group(1).replace("'", "").strip() if offered else ""
        return (f"the broker does not accept SASL mechanism {mechanism} "
                f"({'it accepts ' + names + '; ' if names else ''}check KAFKA_SASL_MECHANISM)")
    if isinstance(exc, kafka_errors.IllegalSaslStateError):
        return (f"the broker refused the SASL handshake (ILLEGAL_SASL_STATE): is {broker} a "
                f"SASL_SSL listener?")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed ({_cert_problem(exc, broker, cafile)})"
    if isinstance(exc, ssl.SSLError) and not isinstance(exc, _TRANSIENT_SSL):
        detail = exc.reason or exc.strerror or str(exc)
        return (f"TLS handshake failed ({detail}): is {broker} a SASL_SSL listener, with TLS "
                f"on that port?")
    return None


def _cert_problem(exc: ssl.SSLCertVerificationError, broker: str, cafile: str | None) -> str:
    """Why the broker's certificate was not accepted, in words naming the setting to fix."""
    code = getattr(exc, "verify_code", None)
    detail = str(getattr(exc, "verify_message", "") or exc.reason or exc)
    host = broker.rsplit(":", 1)[0]
    if code in (_HOSTNAME_MISMATCH, _IP_ADDRESS_MISMATCH) or "mismatch" in detail.lower():
        return (f"the broker's certificate is not valid for {host}: {detail}; use a host name "
                f"or address in its subjectAltName in BROKER_URL")
    if code == _CERT_HAS_EXPIRED:
        return f"the broker's certificate has expired: {detail}"
    if code == _CERT_NOT_YET_VALID:
        return f"the broker's certificate is not valid yet (check the clock): {detail}"
    if cafile:
        return f"KAFKA_SSL_CAFILE={cafile} did not sign the broker's certificate: {detail}"
    return (f"no CA trusted by this system signed the broker's certificate: {detail}; set "
            f"KAFKA_SSL_CAFILE to the CA's PEM file")


def bootstrap_hosts(bootstrap: str) -> list[tuple[str, int]]:
    """``host:port[,host:port]`` (``kafka://`` prefixes allowed) as ``(host, port)`` pairs."""
    hosts: list[tuple[str, int]] = []
    for item in bootstrap.split(","):
        item = item.strip().removeprefix("kafka://").rstrip("/")
        if not item:
            continue
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            host, port = item, "9092"
        hosts.append((host.strip("[]"), int(port)))
    return hosts


async def _try(host: str, port: int, auth: Mapping[str, Any], timeout_s: float) -> None:
    """Open one connection (TLS, ApiVersions, SASL login) and close it; raises why not."""
    conn = await asyncio.wait_for(
        create_conn(host, port, client_id="storestream-broker-check",
                    request_timeout_ms=max(1000, int(timeout_s * 1000)), **auth),
        timeout_s + 1)
    conn.close()


async def check_access(
    bootstrap: str, auth: Mapping[str, Any], *, cafile: str | None = None,
    password_set: bool = True, wait_s: float = WAIT_S,
    attempt_timeout_s: float = ATTEMPT_TIMEOUT_S, retry_s: float = RETRY_S,
) -> str | None:
    """``None`` once a bootstrap server let us in; raises :class:`BrokerAccessDenied` when
    one refused us for good; after ``wait_s`` without an answer, returns why none answered.
    """
    hosts = bootstrap_hosts(bootstrap)
    deadline = time.monotonic() + wait_s
    waiting_said = False
    last = "no bootstrap servers"
    while True:
        for host, port in hosts:
            broker = f"{host}:{port}"
            budget = max(1.0, min(attempt_timeout_s, deadline - time.monotonic()))
            try:
                await _try(host, port, auth, budget)
            except Exception as exc:  # sorted out below: a refusal, or not there yet
                message = failure_message(
                    exc, broker=broker, username=auth.get("sasl_plain_username"),
                    mechanism=auth.get("sasl_mechanism"), cafile=cafile,
                    password_set=password_set)
                if message is not None:
                    raise BrokerAccessDenied(message) from exc
                last = f"{broker}: {type(exc).__name__} {exc}".rstrip()
                continue
            return None
        if time.monotonic() + retry_s >= deadline:
            return last
        if not waiting_said:
            waiting_said = True
            log.warning("storestream: Kafka at %s does not answer yet (%s); waiting up to "
                        "%.0f s for it", bootstrap, last, wait_s)
        await asyncio.sleep(retry_s)


def _run_blocking(bootstrap: str, auth: Mapping[str, Any], **options: Any) -> str | None:
    """:func:`check_access` on a thread of its own (callable from inside a running loop);
    a daemon thread, so Ctrl-C is not held up by it."""
    results: queue.Queue[tuple[str | None, BaseException | None]] = queue.Queue()

    def run() -> None:
        try:
            results.put((asyncio.run(check_access(bootstrap, auth, **options)), None))
        except BaseException as exc:
            results.put((None, exc))

    threading.Thread(target=run, name="broker-check", daemon=True).start()
    outcome, error = results.get()
    if error is not None:
        raise error
    return outcome


def invoked_command(argv: Sequence[str]) -> str | None:
    """The ``faust`` subcommand in ``argv`` (``faust -A app worker -l info`` -> ``worker``)."""
    skip = False
    for arg in argv[1:]:
        if skip:
            skip = False
        elif arg in _VALUE_OPTIONS:
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def require_access(bootstrap: str, auth: Mapping[str, Any], *, wait_s: float = WAIT_S) -> None:
    """Exit (``SystemExit`` with the one line) when the broker refuses these settings."""
    try:
        unanswered = _run_blocking(
            bootstrap, auth, cafile=os.environ.get("KAFKA_SSL_CAFILE") or None,
            password_set=bool(os.environ.get("KAFKA_SASL_PASSWORD")), wait_s=wait_s)
    except BrokerAccessDenied as exc:
        raise SystemExit(str(exc)) from None
    if unanswered is not None:
        log.warning("storestream: Kafka at %s did not answer within %.0f s (%s); starting "
                    "anyway", bootstrap, wait_s, unanswered)


def on_worker_init(sender: Any, /, *args: Any, signal: Any = None, **kwargs: Any) -> None:
    """``app.on_worker_init`` receiver: :func:`require_access` for the ``worker`` command
    when the connection is secured (SASL or TLS), once per process."""
    global _checked
    if _checked or invoked_command(sys.argv) != "worker":
        return
    _checked = True
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    conf = sender.conf
    auth = dict(credentials_to_aiokafka_auth(conf.broker_credentials, conf.ssl_context))
    if auth.get("security_protocol", "PLAINTEXT") == "PLAINTEXT":
        return
    bootstrap = ",".join(f"{url.host}:{url.port or 9092}" for url in conf.broker)
    require_access(bootstrap, auth)

