"""The start-up check of the broker connection: refusals are one line, the rest is waited for."""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import errors as kafka_errors

from app.broker import broker_check
from app.broker.broker_check import BrokerAccessDenied, check_access, failure_message

BROKER = "127.0.0.1:9093"
CAFILE = "/etc/kafka/ca.pem"


def message(exc: BaseException, **settings: Any) -> str | None:
    options: dict[str, Any] = {"username": "storestream", "mechanism": "SCRAM-SHA-512",
                               "cafile": CAFILE, **settings}
    return failure_message(exc, broker=BROKER, **options)


def cert_error(code: int, detail: str) -> ssl.SSLCertVerificationError:
    """What Python's ssl module raises (reason, verify_code and verify_message set)."""
    exc = ssl.SSLCertVerificationError(
        1, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {detail} (_ssl.c:1006)")
    exc.reason = "CERTIFICATE_VERIFY_FAILED"
    exc.verify_code = code
    exc.verify_message = detail
    return exc


def test_a_rejected_login_names_the_user_and_the_settings() -> None:
    exc = kafka_errors.SaslAuthenticationFailed(
        "Authentication failed during authentication due to invalid credentials with SASL "
        "mechanism SCRAM-SHA-512")
    assert message(exc) == (
        "storestream: cannot connect to Kafka at 127.0.0.1:9093: SASL authentication failed "
        "for user 'storestream' with SCRAM-SHA-512 (wrong password or unknown user; check "
        "KAFKA_SASL_USERNAME/KAFKA_SASL_PASSWORD)")
    assert message(kafka_errors.AuthenticationFailedError()) == message(exc)


def test_a_rejected_login_without_a_password_says_it_is_not_set() -> None:
    text = message(kafka_errors.SaslAuthenticationFailed("invalid credentials"),
                   password_set=False)
    assert text is not None and "(KAFKA_SASL_PASSWORD is not set; check" in text


def test_a_mechanism_the_broker_does_not_enable_lists_what_it_does() -> None:
    exc = kafka_errors.UnsupportedSaslMechanismError(
        "Kafka broker does not support SCRAM-SHA-512 sasl mechanism. Enabled mechanisms are: "
        "['PLAIN', 'SCRAM-SHA-256']")
    assert message(exc) == (
        "storestream: cannot connect to Kafka at 127.0.0.1:9093: the broker does not accept "
        "SASL mechanism SCRAM-SHA-512 (it accepts PLAIN, SCRAM-SHA-256; check "
        "KAFKA_SASL_MECHANISM)")
    bare = message(kafka_errors.UnsupportedSaslMechanismError())
    assert bare is not None and bare.endswith("SCRAM-SHA-512 (check KAFKA_SASL_MECHANISM)")


def test_a_listener_without_sasl() -> None:
    text = message(kafka_errors.IllegalSaslStateError())
    assert text is not None and "is 127.0.0.1:9093 a SASL_SSL listener?" in text


def test_a_certificate_not_signed_by_the_ca_file_names_the_file() -> None:
    exc = cert_error(19, "self-signed certificate in certificate chain")
    assert message(exc) == (
        "storestream: cannot connect to Kafka at 127.0.0.1:9093: TLS certificate verification "
        "failed (KAFKA_SSL_CAFILE=/etc/kafka/ca.pem did not sign the broker's certificate: "
        "self-signed certificate in certificate chain)")


def test_without_a_ca_file_the_system_cas_are_blamed() -> None:
    text = message(cert_error(20, "unable to get local issuer certificate"), cafile=None)
    assert text is not None
    assert ("no CA trusted by this system signed the broker's certificate: unable to get "
            "local issuer certificate; set KAFKA_SSL_CAFILE to the CA's PEM file") in text


def test_a_certificate_for_another_host() -> None:
    exc = cert_error(64, "IP address mismatch, certificate is not valid for '127.0.0.1'.")
    text = message(exc)
    assert text is not None
    assert "the broker's certificate is not valid for 127.0.0.1: IP address mismatch" in text
    assert "subjectAltName" in text and "KAFKA_SSL_CAFILE" not in text
    named = message(cert_error(62, "Hostname mismatch, certificate is not valid for 'kafka'."))
    assert named is not None and "is not valid for 127.0.0.1: Hostname mismatch" in named


def test_an_expired_certificate() -> None:
    text = message(cert_error(10, "certificate has expired"))
    assert text is not None and "the broker's certificate has expired" in text


def test_a_port_without_tls() -> None:
    exc = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)")
    exc.reason = "WRONG_VERSION_NUMBER"
    assert message(exc) == (
        "storestream: cannot connect to Kafka at 127.0.0.1:9093: TLS handshake failed "
        "(WRONG_VERSION_NUMBER): is 127.0.0.1:9093 a SASL_SSL listener, with TLS on that port?")


@pytest.mark.parametrize("exc", [
    ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 9093)"),
    ConnectionResetError(),
    TimeoutError(),
    OSError(113, "No route to host"),
    ssl.SSLEOFError(8, "EOF occurred in violation of protocol"),
    kafka_errors.KafkaConnectionError("Connection at 127.0.0.1:9093 closed"),
    kafka_errors.RequestTimedOutError(),
    kafka_errors.NodeNotReadyError(),
], ids=lambda exc: type(exc).__name__)
def test_a_broker_not_there_yet_is_not_a_refusal(exc: BaseException) -> None:
    assert message(exc) is None


def test_a_refusal_raised_from_another_error_is_found() -> None:
    try:
        try:
            raise kafka_errors.SaslAuthenticationFailed("invalid credentials")
        except kafka_errors.KafkaError as inner:
            raise kafka_errors.KafkaConnectionError("Unable to bootstrap") from inner
    except kafka_errors.KafkaConnectionError as outer:
        text = message(outer)
    assert text is not None and "SASL authentication failed" in text


def test_bootstrap_hosts() -> None:
    assert broker_check.bootstrap_hosts("kafka://a:9093, b:9094,c") == [
        ("a", 9093), ("b", 9094), ("c", 9092)]
    assert broker_check.bootstrap_hosts("[::1]:9093") == [("::1", 9093)]


def test_invoked_command() -> None:
    command = broker_check.invoked_command
    assert command(["faust", "-A", "app", "worker", "-l", "info"]) == "worker"
    assert command(["faust", "--app", "app", "--loglevel", "info", "topics"]) == "topics"
    assert command(["faust", "-A", "app"]) is None


class FakeBrokers:
    """Stands in for :func:`broker_check._try`: per attempt, what each host does."""

    def __init__(self, script: Mapping[str, list[BaseException | None]]) -> None:
        self.script = {host: list(steps) for host, steps in script.items()}
        self.attempts: list[str] = []

    async def __call__(self, host: str, port: int, auth: Mapping[str, Any],
                       timeout_s: float) -> None:
        broker = f"{host}:{port}"
        self.attempts.append(broker)
        steps = self.script[broker]
        outcome = steps.pop(0) if len(steps) > 1 else steps[0]
        if outcome is not None:
            raise outcome


AUTH = {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "storestream", "sasl_plain_password": "x"}
REFUSED = ConnectionRefusedError(111, "Connect call failed")


def run_check(brokers: FakeBrokers, monkeypatch: pytest.MonkeyPatch, bootstrap: str,
              **options: Any) -> str | None:
    monkeypatch.setattr(broker_check, "_try", brokers)
    return asyncio.run(check_access(bootstrap, AUTH, retry_s=0.01, **options))


def test_the_check_passes_on_the_first_broker_that_lets_it_in(
        monkeypatch: pytest.MonkeyPatch) -> None:
    brokers = FakeBrokers({"a:1": [REFUSED], "b:2": [None]})
    assert run_check(brokers, monkeypatch, "a:1,b:2") is None
    assert brokers.attempts == ["a:1", "b:2"]


def test_a_refusal_ends_the_check_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    brokers = FakeBrokers({"a:1": [kafka_errors.SaslAuthenticationFailed("bad")],
                           "b:2": [None]})
    with pytest.raises(BrokerAccessDenied, match=r"^storestream: cannot connect to Kafka at "
                                                 r"a:1: SASL authentication failed"):
        run_check(brokers, monkeypatch, "a:1,b:2", cafile=CAFILE)
    assert brokers.attempts == ["a:1"]


def test_a_broker_starting_up_is_waited_for(monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    brokers = FakeBrokers({"a:1": [REFUSED, ConnectionResetError(), REFUSED, None]})
    with caplog.at_level(logging.WARNING, logger="app.broker.broker_check"):
        assert run_check(brokers, monkeypatch, "a:1", wait_s=10) is None
    assert len(brokers.attempts) == 4
    waiting = [r.getMessage() for r in caplog.records]
    assert len(waiting) == 1 and "does not answer yet" in waiting[0]


def test_a_refusal_after_waiting_still_ends_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    brokers = FakeBrokers({"a:1": [REFUSED, REFUSED, cert_error(19, "self-signed")]})
    expected = re.escape(f"KAFKA_SSL_CAFILE={CAFILE} did not sign")
    with pytest.raises(BrokerAccessDenied, match=expected):
        run_check(brokers, monkeypatch, "a:1", cafile=CAFILE, wait_s=10)


def test_no_answer_within_the_wait_is_reported_not_raised(
        monkeypatch: pytest.MonkeyPatch) -> None:
    brokers = FakeBrokers({"a:1": [REFUSED]})
    last = run_check(brokers, monkeypatch, "a:1", wait_s=0.2)
    assert last is not None and last.startswith("a:1: ConnectionRefusedError")


def test_require_access_exits_with_the_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broker_check, "_try", FakeBrokers(
        {"a:1": [kafka_errors.SaslAuthenticationFailed("bad")]}))
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "x")
    with pytest.raises(SystemExit) as exited:
        broker_check.require_access("a:1", AUTH)
    assert str(exited.value.code).startswith("storestream: cannot connect to Kafka at a:1: SASL")


def fake_app(credentials: Any = None) -> Any:
    url = SimpleNamespace(host="a", port=1)
    return SimpleNamespace(conf=SimpleNamespace(broker=[url], broker_credentials=credentials,
                                                ssl_context=None))


def test_the_receiver_checks_secured_workers_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import faust

    checked: list[tuple[str, str]] = []
    monkeypatch.setattr(broker_check, "require_access",
                        lambda bootstrap, auth: checked.append((bootstrap,
                                                                auth["security_protocol"])))
    secured = faust.SASLCredentials(username="u", password="p", mechanism="SCRAM-SHA-512",
                                    ssl_context=ssl.create_default_context())
    for argv, app in ((["faust", "-A", "app", "worker"], fake_app()),
                      (["faust", "-A", "app", "topics"], fake_app(secured)),
                      (["faust", "-A", "app", "worker"], fake_app(secured)),
                      (["faust", "-A", "app", "worker"], fake_app(secured))):
        monkeypatch.setattr(broker_check, "_checked", False)
        monkeypatch.setattr("sys.argv", argv)
        broker_check.on_worker_init(app)
    assert checked == [("a:1", "SASL_SSL"), ("a:1", "SASL_SSL")]
    broker_check.on_worker_init(fake_app(secured))  # once per process
    assert len(checked) == 2
