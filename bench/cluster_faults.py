"""Faults of a real three-node cluster: leader, controller and pause faults, a network cut.

``python -m bench.reliability --cluster 3 [--quick]`` (``make reliability CLUSTER=3``) runs
:class:`ClusterRun`: the single-broker run of :mod:`bench.reliability` (same inputs, same
checks against the input log, same worker SIGKILLs/SIGTERMs), on three KRaft nodes
(replication factor 3, ``min.insync.replicas`` 2, an idempotent ``acks=all`` input producer)
with three workers, the third inside a network namespace of the run's own making
(:mod:`bench.netns`). One at a time, at random moments, and each only once the cluster is
whole again (every node up, no under-replicated partition), it

* SIGKILLs the node leading the most input partitions, and restarts it;
* SIGKILLs the active KRaft controller (asked of the metadata quorum), and restarts it;
* SIGSTOPs a node for longer than the broker and consumer session timeouts, then SIGCONTs it;
* cuts the namespaced worker off the brokers, and later off redis alone, for a while each
  (a blackhole route), then heals the path.

Per fault it records the time until every worker is healthy and processing again (each
worker's ``/health`` 200 and its ``storestream_events_total`` grown since the fault: timed
from the fault, or from the heal for a network cut), and at the end the under-replicated
partitions of every topic. ``PROCESSING_GUARANTEE=exactly_once`` in the environment runs
the workers with transactions.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import signal
import statistics
import tempfile
import time
import traceback
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from aiokafka.errors import KafkaError

from app.broker.topology import topic_specs
from bench.cluster_stack import (
    ClusterStack,
    active_controller,
    describe_partitions,
    leader_counts,
    under_replicated,
)
from bench.netns import NetNamespace
from bench.reliability import (
    FULL,
    QUICK,
    RESULTS,
    Plan,
    Run,
    Slot,
    failures,
    group_lag,
    metric,
    table,
)

#: The cluster run of the issue: >= 50,000 purchases from 2,000 customers and >= 20,000
#: positions over nine minutes (13 cluster faults one at a time take ~30 s each here).
CLUSTER_FULL = replace(FULL, mode="cluster", customers=2_000, purchases=50_000, produce_s=540,
                       sigkills=4, sigterms=2, shoppers=400, positions_per_s=38,
                       load_clients=30, load_s=20, settle_s=300, recovery_timeout_s=180)
#: A smaller run (the exactly-once run, and a check of the machinery).
CLUSTER_QUICK = replace(QUICK, mode="cluster-quick", partitions=6, customers=300,
                        purchases=6_000, produce_s=200, sigkills=2, sigterms=1, bad_rounds=10,
                        shoppers=100, positions_per_s=20, settle_s=240,
                        recovery_timeout_s=150, progress_every_s=10)


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """Infrastructure faults of a run, besides the worker signals of its :class:`Plan`."""

    leader_kills: int
    controller_kills: int
    pauses: int
    pause_s: float  # > broker.session.timeout.ms (9 s) and the consumer session (6 s)
    broker_cuts: int
    redis_cuts: int
    cut_s: float
    settle_wait_s: float  # longest wait for a whole cluster before the next fault


FULL_FAULTS = FaultPlan(leader_kills=5, controller_kills=3, pauses=3, pause_s=15,
                        broker_cuts=1, redis_cuts=1, cut_s=30, settle_wait_s=90)
QUICK_FAULTS = FaultPlan(leader_kills=2, controller_kills=1, pauses=1, pause_s=15,
                         broker_cuts=1, redis_cuts=1, cut_s=30, settle_wait_s=60)
#: A network cut's workers must be healthy and processing within this many seconds of healing.
HEAL_CONVERGE_S = 60.0
KINDS = ("leader kill", "controller kill", "broker pause", "broker cut", "redis cut",
         "worker SIGKILL", "worker SIGTERM")


@dataclass(slots=True)
class Fault:
    """One injected fault: what, when, to whom, and how long until work resumed."""

    kind: str
    target: str
    at_s: float  # since the faults began
    outage_s: float | None = None  # kill -> node back up, stop -> cont, cut -> heal
    recovery_s: float | None = None  # fault (cut: heal) -> every worker healthy + processing
    outcome: str = "pending"  # recovered, timeout, or why the fault could not be injected


class ClusterRun(Run):
    """:class:`~bench.reliability.Run` on a :class:`ClusterStack` with cluster faults."""

    def __init__(self, plan: Plan, faults: FaultPlan, seed: int, stack: ClusterStack,
                 run_dir: Path) -> None:
        self.netns = stack.netns
        self.cluster_stack = stack
        self.fault_plan = faults
        self.cluster_faults: list[Fault] = []
        self.last_tracker: asyncio.Task[None] | None = None
        super().__init__(plan, seed, stack, run_dir,
                         worker_env={"TOPIC_REPLICATION": str(stack.kafka_nodes),
                                     "PRODUCER_IDEMPOTENCE": "on"})

    def make_slots(self) -> list[Slot]:
        """Two workers on the host and a third inside the namespace; each advertises an
        address the others reach (the namespace has its own loopback)."""
        slots = [Slot(self.deployment, "w1"), Slot(self.deployment, "w2"),
                 Slot(self.deployment, "w3", host=self.netns.ns_ip, wrap=self.netns.wrap)]
        for slot in slots:
            seen_as = self.netns.ns_ip if slot.wrap is not None else self.netns.host_ip
            slot.extra_env = {"WEB_BIND": "0.0.0.0", "WEB_HOST": seen_as,
                              "CANONICAL_URL": f"http://{seen_as}:{slot.port}"}
        return slots

    def producer_options(self) -> dict[str, Any]:
        return {**super().producer_options(), "enable_idempotence": True,
                "request_timeout_ms": 60_000}

    # -- cluster state
    def input_topics(self) -> list[str]:
        return [self.deployment.topic("purchases"), self.deployment.topic("customers.locations")]

    def deployment_topics(self) -> list[str]:
        return [spec.name for spec in topic_specs(self.settings)]

    async def urp(self, topics: list[str] | None) -> int | None:
        """Under-replicated partitions of ``topics`` (all when ``None``; ``None``: unknown)."""
        try:
            return len(under_replicated(await describe_partitions(self.stack.bootstrap,
                                                                  topics)))
        except (KafkaError, OSError, TimeoutError):
            return None

    async def cluster_whole(self) -> bool:
        """Every node up, no under-replicated partition, the last cluster fault's workers
        processing again (so each fault's recovery time is its own)."""
        return ((self.last_tracker is None or self.last_tracker.done())
                and not self.cluster_stack.cluster.dead()
                and await self.urp(self.deployment_topics()) == 0)

    # -- processing again
    async def events(self, slot: Slot) -> tuple[int, float] | None:
        """(pid, events processed) of a ready worker, ``None`` when it is not ready."""
        worker = slot.worker
        if worker is None or not await self.ready(slot):
            return None
        status, text = await self.get(slot.port, "/metrics", timeout=3.0)
        if status != 200:
            return None
        return worker.process.pid, metric(text, "storestream_events_total")

    async def track_processing(self, fault: Fault, since: float) -> None:
        """Time from ``since`` until every worker is ready and has processed more events
        than when it began (a restarted worker: any), or, once everything produced is
        consumed (group lag 0), simply ready: there is nothing left to process."""
        base: dict[str, tuple[int, float] | None] = {
            s.name: await self.events(s) for s in self.slots}
        while True:
            ready = idle = 0
            for slot in self.slots:
                now = await self.events(slot)
                was = base[slot.name]
                ready += now is not None
                idle += now is not None and was is not None and now[0] == was[0] and (
                    now[1] <= was[1])
            done = ready == len(self.slots) and (
                idle == 0 or await group_lag(self.stack.bootstrap, self.group,
                                             self.input_ends()) == 0)
            if done:
                fault.recovery_s = round(time.monotonic() - since, 1)
                fault.outcome = "recovered"
                self.say(f"{self.phase}: after {fault.kind} of {fault.target}: every worker "
                         f"healthy and processing {fault.recovery_s:.1f} s later")
                return
            if time.monotonic() - since > self.plan.recovery_timeout_s:
                fault.outcome = "timeout"
                self.say(f"{self.phase}: after {fault.kind} of {fault.target}: workers NOT "
                         f"all processing {self.plan.recovery_timeout_s:.0f} s later")
                return
            await asyncio.sleep(1.0)

    def record(self, kind: str, target: str, started: float) -> Fault:
        fault = Fault(kind, target, round(started - self.faults_t0, 1))
        self.cluster_faults.append(fault)
        return fault

    def follow(self, fault: Fault, since: float) -> asyncio.Task[None]:
        task = asyncio.create_task(self.track_processing(fault, since))
        self.trackers.append(task)
        return task

    # -- worker faults: as the single-broker run, plus the processing-again time
    async def kill_and_restart(self, slot: Slot, sig: int, was_ready: bool = True) -> None:
        started = time.monotonic()
        fault = self.record(f"worker {signal.Signals(sig).name}", slot.name, started)
        await super().kill_and_restart(slot, sig, was_ready)
        self.follow(fault, started)

    # -- cluster faults
    async def inject_faults(self) -> None:
        await asyncio.gather(super().inject_faults(), self.inject_cluster_faults())

    async def inject_cluster_faults(self) -> None:
        fp = self.fault_plan
        kinds = (["leader kill"] * fp.leader_kills + ["controller kill"] * fp.controller_kills
                 + ["broker pause"] * fp.pauses)
        self.rnd.shuffle(kinds)
        cuts = ["broker cut"] * fp.broker_cuts + ["redis cut"] * fp.redis_cuts
        for number, cut in enumerate(cuts, start=1):  # spread through the sequence
            kinds.insert(number * len(kinds) // (len(cuts) + 1) + number - 1, cut)
        moments = sorted(self.rnd.uniform(0.03, 0.8) * self.plan.produce_s for _ in kinds)
        for number, (at, kind) in enumerate(zip(moments, kinds, strict=True), start=1):
            await asyncio.sleep(max(0.0, self.faults_t0 + at - time.monotonic()))
            try:
                await self.wait_until("the cluster whole again (every node up, no "
                                      "under-replicated partition)", self.cluster_whole,
                                      fp.settle_wait_s, interval=1.0)
            except TimeoutError as exc:
                self.say(f"{self.phase}: {exc}; injecting the next fault anyway")
            self.say(f"{self.phase}: cluster fault {number}/{len(kinds)}: {kind}")
            await self.cluster_fault(kind)

    async def cluster_fault(self, kind: str) -> None:
        cluster = self.cluster_stack.cluster
        started = time.monotonic()
        if kind in ("broker cut", "redis cut"):
            address = self.netns.host_ip if kind == "broker cut" else self.netns.redis_ip
            fault = self.record(kind, f"w3 -x- {address}", started)
            self.netns.cut(address)
            self.say(f"{self.phase}: FAULT {kind} at {fault.at_s:.1f} s: w3 in {self.netns.name}"
                     f" loses its path to {address} for {self.fault_plan.cut_s:.0f} s")
            await asyncio.sleep(self.fault_plan.cut_s)
            self.netns.heal(address)
            healed = time.monotonic()
            fault.outage_s = round(healed - started, 1)
            self.say(f"{self.phase}: healed {kind}: w3 reaches {address} again")
            self.last_tracker = self.follow(fault, healed)
            return
        if kind == "controller kill":
            node = await asyncio.to_thread(active_controller, self.stack.bootstrap)
            if node is None:
                self.record(kind, "?", started).outcome = "controller unknown"
                self.say(f"{self.phase}: the active controller could not be told: no fault")
                return
            why = "the active KRaft controller"
        elif kind == "leader kill":
            try:
                counts = leader_counts(await describe_partitions(self.stack.bootstrap,
                                                                 self.input_topics()))
            except (KafkaError, OSError, TimeoutError) as exc:
                self.record(kind, "?", started).outcome = f"leaders unknown: {exc!r}"
                return
            most = max(counts.values())
            node = self.rnd.choice(sorted(n for n, c in counts.items() if c == most))
            why = f"leader of {most} of {sum(counts.values())} input partitions"
        else:
            node = self.rnd.choice(sorted(cluster.pids))
            why = "a random node"
        fault = self.record(kind, f"kafka-{node}", started)
        if kind == "broker pause":
            pid = cluster.signal_node(node, signal.SIGSTOP)
            self.say(f"{self.phase}: FAULT {kind} at {fault.at_s:.1f} s: SIGSTOP kafka-{node} "
                     f"(pid {pid}, {why}) for {self.fault_plan.pause_s:.0f} s")
            await asyncio.sleep(self.fault_plan.pause_s)
            cluster.signal_node(node, signal.SIGCONT)
            fault.outage_s = round(time.monotonic() - started, 1)
            self.say(f"{self.phase}: SIGCONT kafka-{node} after {fault.outage_s:.1f} s")
        else:
            pid = await asyncio.to_thread(cluster.signal_node, node, signal.SIGKILL)
            self.say(f"{self.phase}: FAULT {kind} at {fault.at_s:.1f} s: SIGKILL kafka-{node} "
                     f"(pid {pid}, {why}); restarting it")
            new_pid = await asyncio.to_thread(cluster.restart_node, node)
            fault.outage_s = round(time.monotonic() - started, 1)
            self.say(f"{self.phase}: kafka-{node} back up as pid {new_pid} "
                     f"{fault.outage_s:.1f} s after its SIGKILL")
        self.last_tracker = self.follow(fault, started)

    # -- the whole run
    async def execute(self) -> dict[str, Any]:
        figures = self.figures
        figures.update(kafka_nodes=self.stack.kafka_nodes, netns=self.netns.name,
                       processing_guarantee=self.settings.processing_guarantee,
                       fault_plan=asdict(self.fault_plan))
        try:
            await super().execute()
        finally:
            started = time.monotonic()
            urp: int | None = None
            while time.monotonic() - started < 120:
                urp = await self.urp(None)
                if urp == 0 and not self.cluster_stack.cluster.dead():
                    break
                await asyncio.sleep(2.0)
            figures["under_replicated_end"] = urp
            figures["nodes_down_end"] = len(self.cluster_stack.cluster.dead())
            self.say(f"cluster: under-replicated partitions at the end {urp} (every topic), "
                     f"nodes down {figures['nodes_down_end']}")
        return figures

    def fenced_exits(self) -> list[str]:
        """Workers that exited on their own because their transactional producer was fenced
        (``ProducerFenced``: a zombie after a network cut stopping rather than diverging)."""
        out = []
        for slot in self.slots:
            for incarnation in range(slot.incarnation):  # the last one is still running
                log = self.run_dir / f"{slot.name}.{incarnation}.log"
                name = f"{slot.name}#{incarnation}"
                if (any(e.startswith(f"{name} ") for e in self.unexpected_exits)
                        and "ProducerFenced" in log.read_text(errors="replace")):
                    out.append(name)
        return out

    def summarise(self, runtime_s: float) -> dict[str, Any]:
        fenced = self.fenced_exits()
        figures = super().summarise(runtime_s)
        figures["faults"]["fenced_exits"] = fenced
        by_kind: dict[str, list[Fault]] = defaultdict(list)
        for fault in self.cluster_faults:
            by_kind[fault.kind].append(fault)
        figures["cluster_faults"] = {
            "log": [asdict(f) for f in self.cluster_faults],
            "by_kind": {kind: _kind_figures(by_kind.get(kind, [])) for kind in KINDS},
        }
        figures["failures"] = cluster_failures(figures)
        return figures


def _kind_figures(faults: list[Fault]) -> dict[str, Any]:
    times = [f.recovery_s for f in faults if f.recovery_s is not None]
    return {"count": len(faults),
            "recovered": len(times),
            "not_recovered": sum(1 for f in faults if f.outcome != "recovered"),
            "p50_s": statistics.median(times) if times else None,
            "max_s": max(times, default=None),
            "max_outage_s": max((f.outage_s for f in faults if f.outage_s is not None),
                                default=None)}


def cluster_failures(figures: dict[str, Any]) -> list[str]:
    """The single-broker run's failures plus the cluster's must-be figures.

    Dead letters of offers and associate alerts (their source is ``customers.promotions`` or
    ``associates.alerts``) count like any other: a worker cut off from redis parks what it
    cannot deliver and retries until redis is back (``app.delivery.parking``), so none is
    given up; every offer must reach redis exactly once (``not_pushed`` and
    ``pushed_more_than_once``).
    """
    faults = figures.get("faults", {})
    if faults.get("fenced_exits"):  # a fenced zombie stopping is exactly_once working
        figures = {**figures, "faults": {**faults, "unexpected_exits": faults[
            "unexpected_exits"] - len(faults["fenced_exits"])}}
    out = failures(figures)
    fp = figures.get("fault_plan", {})
    kinds = figures.get("cluster_faults", {}).get("by_kind", {})
    for kind, wanted in (("leader kill", fp.get("leader_kills")),
                         ("controller kill", fp.get("controller_kills")),
                         ("broker pause", fp.get("pauses")), ("broker cut", fp.get("broker_cuts")),
                         ("redis cut", fp.get("redis_cuts"))):
        got = kinds.get(kind, {})
        if got.get("count", 0) < (wanted or 0):
            out.append(f"{kind}s {got.get('count', 0)} < {wanted}")
    for kind, got in kinds.items():
        if got.get("not_recovered"):
            out.append(f"{kind}: {got['not_recovered']} without every worker processing again")
    for kind in ("broker cut", "redis cut"):
        slowest = kinds.get(kind, {}).get("max_s")
        if slowest is not None and slowest > HEAL_CONVERGE_S:
            out.append(f"{kind}: workers processing {slowest} s after healing "
                       f"(> {HEAL_CONVERGE_S:.0f})")
    if figures.get("under_replicated_end") != 0:
        out.append(f"under-replicated partitions at the end: "
                   f"{figures.get('under_replicated_end')}")
    if figures.get("nodes_down_end"):
        out.append(f"Kafka nodes down at the end: {figures.get('nodes_down_end')}")
    return out


def cluster_table(figures: dict[str, Any]) -> str:
    """The single-broker table, then the cluster's faults by kind and one by one."""
    lines = table(figures).splitlines()[:-2]  # its RESULT line goes last, with ours
    kinds = figures.get("cluster_faults", {}).get("by_kind", {})
    lines.append("")
    lines.append(f"cluster: {figures.get('kafka_nodes')} KRaft nodes (RF 3, min ISR 2), "
                 f"processing guarantee {figures.get('processing_guarantee')}, "
                 f"under-replicated partitions at the end {figures.get('under_replicated_end')}"
                 f" (must be 0)")
    fenced = figures.get("faults", {}).get("fenced_exits", [])
    lines.append(f"workers that exited fenced (ProducerFenced: a zombie stopping, then "
                 f"restarted; not counted above): {len(fenced)} {' '.join(fenced)}")
    offers_dead = figures.get("dead_letters", {}).get("delivery_letters")
    lines.append(f"dead letters of offers/alerts (a worker cut off from redis parks them "
                 f"until it is back): {offers_dead} (counted above: must be 0)")
    lines.append("fault kind        count  to every worker processing again s: p50 / max"
                 "  (longest outage s)")
    for kind, got in kinds.items():
        missed = f"  NOT RECOVERED {got['not_recovered']}" if got["not_recovered"] else ""
        lines.append(f"  {kind:<16} {got['count']:>4}   {_s(got['p50_s']):>6} / "
                     f"{_s(got['max_s']):>6}   ({_s(got['max_outage_s'])}){missed}")
    lines.append("cluster faults: at s, kind, target, outage s, processing again s, outcome")
    for fault in figures.get("cluster_faults", {}).get("log", []):
        if fault["kind"].startswith("worker"):
            continue
        lines.append(f"  {fault['at_s']:7.1f}  {fault['kind']:<16} {fault['target']:<22} "
                     f"{_s(fault['outage_s']):>6}  {_s(fault['recovery_s']):>6}  "
                     f"{fault['outcome']}")
    lines += ["", "RESULT: " + ("OK, every must-be-zero figure is zero"
                                if not figures.get("failures")
                                else "FAILED: " + "; ".join(figures["failures"]))]
    return "\n".join(lines)


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def run_cluster(plan: Plan, faults: FaultPlan, seed: int, keep_logs: bool,
                nodes: int) -> dict[str, Any]:
    """One cluster run in its own namespace, cluster and redis; returns the figures."""
    started = time.monotonic()
    run_dir = Path(tempfile.mkdtemp(prefix=f"storestream-reliability-{plan.mode}-"))
    figures: dict[str, Any] = {}
    print(f"[  0.0s] stack: creating a network namespace and starting {nodes} KRaft nodes "
          "and redis-server", flush=True)
    with NetNamespace() as netns, ClusterStack(netns, nodes) as stack:
        print(f"[{time.monotonic() - started:6.1f}s] stack: namespace {netns.name} "
              f"({netns.ns_ip}), kafka at {stack.bootstrap}, redis at {stack.redis_url}",
              flush=True)
        bench = ClusterRun(plan, faults, seed, stack, run_dir)
        bench.t0 = started
        bench.figures["broker"] = f"kafka x{nodes}"
        try:
            asyncio.run(bench.execute())
        except Exception as exc:
            bench.figures["error"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        finally:
            bench.stop_workers()
        figures = bench.summarise(time.monotonic() - started)
        if figures["failures"] or keep_logs:
            stack.keep_run_dir = True
            figures["broker_logs"] = str(stack.run_dir)
    if figures["failures"] or keep_logs:
        print(f"worker logs kept in {run_dir}, broker logs in {figures['broker_logs']}",
              flush=True)
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
        figures["logs"] = None
    return figures


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def cluster_main(nodes: int, quick: bool, seed: int, keep_logs: bool,
                 json_path: Path | None) -> int:
    """``--cluster N``: run, print the table, write the figures; exit 1 on a failure."""
    # aiokafka logs every refused connection to a killed node: the progress lines say more
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    # SIGTERM unwinds like Ctrl-C: the namespace, nodes and workers are cleaned up
    signal.signal(signal.SIGTERM, _interrupt)
    if nodes != 3:
        print("--cluster: the fault run is defined for 3 nodes (RF 3, min ISR 2)")
        return 2
    plan, faults = (CLUSTER_QUICK, QUICK_FAULTS) if quick else (CLUSTER_FULL, FULL_FAULTS)
    figures = run_cluster(plan, faults, seed, keep_logs, nodes)
    path = json_path or RESULTS / f"reliability-{plan.mode}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    print()
    print(cluster_table(figures))
    print(f"\nfigures written to {path}", flush=True)
    if "error" in figures and not figures.get("state"):
        return 2
    return 1 if figures["failures"] else 0


__all__ = ["CLUSTER_FULL", "CLUSTER_QUICK", "ClusterRun", "FaultPlan", "cluster_main"]
