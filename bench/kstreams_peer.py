"""Peer: Kafka Streams 4.4 (``bench/kstreams``, a small Java program), built here by Maven.

The program (``io.storestream.bench.KStreamsPeer``) consumes a fresh copy of the purchases
from the beginning and keeps per customer the spend in integer cents and the coffee count in
two changelogged key-value stores, with Kafka Streams' shipped settings (one stream thread,
at_least_once, 30-s commit interval), in four variants: in-memory or RocksDB stores, each with
the record cache as shipped (10 MB, caching on, as the DSL's aggregations have it) and off.
It prints one ``BENCH_RESULT`` line like the other peers: its window from the first record
processed to the ``expect``-th (wall clock and JVM process CPU), peak RSS, and a digest of its
final totals, which it reads back from its stores; the full totals go to a file, and
:func:`run_variant` compares them with :func:`bench.workload.expected_totals`: a variant with
wrong totals gets no figure (status ``error``).

Kafka Streams needs Apache Kafka (Tansu has no transactions, and Kafka Streams' group and
internal-topic handling expect a real broker): on another broker every variant is
``skipped``, saying so.

:func:`run_restore` times the program's restore mode (``--mode restore``): its stores
(String keys, byte[] values) recover changelogs filled beforehand with exactly the records
storestream's changelogs hold (:mod:`bench.recovery`), on a fresh state directory; it reports
the records restored and the time from the first restore start to the last restore end
(a ``StateRestoreListener``), and each store's key count, which must equal the distinct keys
produced (else no figure).

``python -m bench.kstreams_peer build`` builds the jar (``make kstreams``); the bench builds
it on first use (Maven fetches Kafka Streams and RocksDB from Maven Central into ``~/.m2``;
the jar and its dependencies go to the git-ignored ``bench/kstreams/target``).
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from bench.catalogue import CATALOGUE, STAMP_PRODUCT
from bench.deploy import BenchError, Proc
from bench.outside import compare
from bench.workload import Workload, create_topics, expected_totals, log, peer_topics, produce

if TYPE_CHECKING:
    from app.dev.devstack import DevStack
    from bench.peers import PeerResult

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ROOT / "bench" / "kstreams"
POM = PROJECT / "pom.xml"
TARGET = PROJECT / "target"
JAR = TARGET / "kstreams-peer.jar"
LIB = TARGET / "lib"
LOCK = ROOT / ".cache" / "kstreams-build.lock"  # git-ignored, outside what `mvn clean` removes
MAIN_CLASS = "io.storestream.bench.KStreamsPeer"

#: Row name -> (store, caching).
VARIANTS: dict[str, tuple[str, str]] = {
    "kstreams-memory": ("memory", "shipped"),
    "kstreams-memory-nocache": ("memory", "off"),
    "kstreams-rocksdb": ("rocksdb", "shipped"),
    "kstreams-rocksdb-nocache": ("rocksdb", "off"),
}
LABELS = {
    "kstreams-memory": "Kafka Streams (in-memory store)",
    "kstreams-memory-nocache": "Kafka Streams (in-memory store, cache off)",
    "kstreams-rocksdb": "Kafka Streams (RocksDB store)",
    "kstreams-rocksdb-nocache": "Kafka Streams (RocksDB store, cache off)",
}
STARTUP_S = 120.0  # JVM start, group join and internal topics, on two shared cores
CLOSE_S = 90.0  # reading the stores back, close (final commit), the committed offsets

Totals = dict[str, tuple[int, int]]  # customer -> (spend in cents, coffee count)


def _sources_digest() -> str:
    digest = hashlib.sha256(POM.read_bytes())
    for path in sorted((PROJECT / "src").rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(PROJECT)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def build(echo: Callable[[str], object] | None = log) -> Path:
    """The jar, built by Maven first when missing or older than the pom and sources.

    A stamp named after their digest marks a complete build; a file lock keeps parallel
    callers (a test and a bench) from building twice. Maven's own lines show the progress.
    """
    from app.dev.kafka_broker import java_problem

    stamp = TARGET / f"built-{_sources_digest()}"
    if stamp.exists() and JAR.exists():
        return JAR
    if (problem := java_problem()) is not None:
        raise BenchError(f"the Kafka Streams peer: {problem}")
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BenchError("building the Kafka Streams peer needs Maven (`mvn`): "
                         "`make java` installs it")
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists() and JAR.exists():
            return JAR
        if echo is not None:
            echo(f"building the Kafka Streams peer: mvn package -f {POM.relative_to(ROOT)} "
                 "(first run: Kafka Streams and RocksDB from Maven Central, ~1 min)")
        for old in TARGET.glob("built-*"):
            old.unlink()
        started = time.monotonic()
        done = subprocess.run([mvn, "-B", "--no-transfer-progress", "-f", str(POM),
                               "clean", "package"],
                              stdout=sys.stderr, stderr=subprocess.STDOUT, cwd=ROOT)
        if done.returncode != 0 or not JAR.exists():
            raise BenchError(f"Maven could not build the Kafka Streams peer (exit "
                             f"{done.returncode}): see its output above")
        stamp.touch()
        if echo is not None:
            echo(f"built {JAR.relative_to(ROOT)} in {time.monotonic() - started:.0f} s")
    return JAR


def catalogue_arg() -> str:
    """The peers' static catalogue prices, ``product=price,...`` (the program makes cents)."""
    return ",".join(f"{product}={price!r}" for product, (price, _) in CATALOGUE.items())


def command(bootstrap: str, topic: str, app_id: str, *, store: str, caching: str,
            expect: int, max_s: float = float("inf"), state_dir: Path | None = None,
            totals_out: Path | None = None) -> list[str]:
    """The ``java`` command line of one run (the jar must be built)."""
    java = shutil.which("java") or "java"
    argv = [java, "-cp", f"{JAR}{os.pathsep}{LIB}/*",
            "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn", MAIN_CLASS,
            "--bootstrap", bootstrap, "--input", topic, "--application-id", app_id,
            "--store", store, "--caching", caching, "--expect", str(expect),
            "--max-seconds", "inf" if max_s == float("inf") else str(max_s),
            "--catalogue", catalogue_arg(), "--stamp-product", STAMP_PRODUCT]
    if state_dir is not None:
        argv += ["--state-dir", str(state_dir)]
    if totals_out is not None:
        argv += ["--totals-out", str(totals_out)]
    return argv


def digest(totals: Mapping[str, tuple[int, int]]) -> str:
    """SHA-256 of the sorted ``user,cents,coffee`` lines (the program's ``totals_sha256``)."""
    h = hashlib.sha256()
    for user in sorted(totals):
        cents, coffee = totals[user]
        h.update(f"{user},{cents},{coffee}\n".encode())
    return h.hexdigest()


def read_totals(path: Path) -> Totals:
    """The totals file the program writes: ``{user: [cents, coffee]}``."""
    raw: dict[str, list[int]] = json.loads(path.read_text())
    return {user: (int(v[0]), int(v[1])) for user, v in raw.items()}


def expected_cents(workload: Workload) -> Totals:
    """:func:`bench.workload.expected_totals` in cents (prices have two decimals)."""
    spend, coffee = expected_totals(workload)
    return {user: (round(total * 100), coffee.get(user, 0)) for user, total in spend.items()}


def run_variant(name: str, stack: DevStack, workload: Workload, tmp: Path,
                max_s: float) -> PeerResult:
    """One variant on a fresh copy of the purchases; its totals checked."""
    from bench.peers import PeerResult

    store, caching = VARIANTS[name]
    if stack.broker != "kafka":
        return PeerResult(name, status="skipped", detail={
            "reason": f"Kafka Streams needs Apache Kafka, not {stack.broker} "
                      "(run with --broker kafka)"})
    build()
    result = PeerResult(name)
    tag = uuid.uuid4().hex[:6]
    prefix = f"bench-ks-{tag}."
    asyncio.run(create_topics(stack.bootstrap, peer_topics(prefix, workload.partitions)))
    started = time.monotonic()
    ends: dict[int, int] = {}
    asyncio.run(produce(stack.bootstrap, f"{prefix}purchases", workload.purchases, ends=ends))
    result.produce_s = round(time.monotonic() - started, 2)
    log(f"{name}: {workload.events:,} purchases produced in {result.produce_s:.1f} s; "
        "starting the peer")
    state_dir = tmp / f"kstreams-{tag}"
    totals_out = tmp / f"kstreams-{tag}-totals.json"
    argv = command(stack.bootstrap, f"{prefix}purchases", f"{prefix}kstreams", store=store,
                   caching=caching, expect=workload.events, max_s=max_s,
                   state_dir=state_dir, totals_out=totals_out)
    from bench import outside
    from bench.peers import CLOSE_S as HARNESS_CLOSE_S
    from bench.peers import expected, input_ends

    app_id = f"{prefix}kstreams"
    names = {f"{app_id}-spend-changelog", f"{app_id}-coffee-changelog"}
    target = outside.Target(app_id, [f"{prefix}purchases"],
                            lambda topics: sorted(t for t in topics if t in names),
                            outside.decode_two_tables(outside.long_be),
                            expected(workload, as_of=False), changelog_count=2,
                            input_ends=input_ends(f"{prefix}purchases", ends))
    launch = outside.Launch(lambda: Proc(name, argv, dict(os.environ),
                                         tmp / f"{prefix}{name}.log"))
    try:
        outcome = outside.measure(stack.bootstrap, target, launch,
                                  STARTUP_S + max_s + HARNESS_CLOSE_S)
        proc = launch.proc
        assert proc is not None
        report = proc.wait_result(CLOSE_S)
    finally:
        if launch.proc is not None:
            launch.proc.stop()
        shutil.rmtree(state_dir, ignore_errors=True)
    got = read_totals(totals_out)
    totals_out.unlink(missing_ok=True)
    if digest(got) != report["totals_sha256"]:
        raise BenchError(f"{name}: its totals file does not match its digest")
    check = {key: report[key] for key in (
        "customers", "spend_cents_total", "coffee_total", "totals_sha256", "committed_offsets",
        "close_s", "kafka_streams", "store", "caching", "cache_max_bytes",
        "commit_interval_ms", "processing_guarantee")}
    result.fill_outside(outcome, workload.events, proc.started, report)
    wrong = compare(got, expected_cents(workload))
    if wrong is not None and result.status == "ok":
        result.status = "error"
        result.detail["error"] = f"wrong totals in its stores (no figure): {wrong}"
    result.detail.update(stores_checked=wrong is None, **check)
    return result


def run_restore(stack: DevStack, tmp: Path, store: str,
                records: Mapping[str, list[tuple[bytes, bytes]]],
                timeout: float = 900.0) -> dict[str, object]:
    """Kafka Streams restoring ``records`` (table -> changelog records) into ``store``
    (``memory`` or ``rocksdb``) stores of the same names, caching as shipped; checked."""
    from app.dev.devstack import TopicSpec
    from bench.workload import COMPACT_TOPIC_CONFIG, EVENT_TOPIC_CONFIG

    if stack.broker != "kafka":
        return {"skipped": f"Kafka Streams needs Apache Kafka, not {stack.broker}"}
    build()
    tag = uuid.uuid4().hex[:6]
    app_id = f"bench-ksr-{tag}"
    asyncio.run(create_topics(stack.bootstrap, [
        TopicSpec(f"{app_id}.input", 8, EVENT_TOPIC_CONFIG),
        *(TopicSpec(f"{app_id}-{table}-changelog", 8, COMPACT_TOPIC_CONFIG) for table in records),
    ]))
    started = time.monotonic()
    for table, rows in records.items():
        asyncio.run(produce(stack.bootstrap, f"{app_id}-{table}-changelog", rows))
    fill_s = round(time.monotonic() - started, 2)
    state_dir = tmp / f"kstreams-restore-{tag}"
    argv = command(stack.bootstrap, f"{app_id}.input", app_id, store=store, caching="shipped",
                   expect=0, state_dir=state_dir)
    argv += ["--mode", "restore", "--stores", ",".join(records),
             "--restore-timeout-seconds", str(timeout)]
    proc = Proc(f"kstreams restore {store}", argv, dict(os.environ),
                tmp / f"{app_id}.restore.log")
    try:
        report = proc.wait_result(timeout + STARTUP_S)
    finally:
        proc.stop()
        shutil.rmtree(state_dir, ignore_errors=True)
    out: dict[str, object] = {**report, "store": f"kstreams {store}", "fill_s": fill_s}
    total = sum(len(rows) for rows in records.values())
    out["changelog_records"] = total
    wrong = {table: (report.get(f"keys_{table}"), len({k for k, _ in rows}))
             for table, rows in records.items()
             if report.get(f"keys_{table}") != len({k for k, _ in rows})}
    if wrong or int(report["restored_records"]) != total:
        out["error"] = (f"restored {report['restored_records']} of {total} records; keys "
                        f"(got, want) per store that differ: {wrong}")
        return out
    restore_s = float(report["restore_s"])
    out["records_per_s"] = round(total / restore_s) if restore_s > 0 else None
    return out


def runners() -> dict[str, Callable[[DevStack, Workload, Path, float], PeerResult]]:
    """One runner per variant, for :data:`bench.peers.RUNNERS`."""
    def runner(name: str) -> Callable[[DevStack, Workload, Path, float], PeerResult]:
        return lambda stack, workload, tmp, max_s: run_variant(name, stack, workload, tmp,
                                                               max_s)
    return {name: runner(name) for name in VARIANTS}


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.kstreams_peer build``: build the jar (if not built yet)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.kstreams_peer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("build",))
    parser.parse_args(argv)
    log(f"Kafka Streams peer: {build().relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
