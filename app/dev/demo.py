"""``make demo``: the embedded stack, one worker, the recipe's sample data, readable tables.

Runs until Ctrl-C, then stops the worker, the broker and redis. Everything it starts binds to
loopback; the broker keeps nothing across restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
from terminaltables import AsciiTable

from app.broker.topology import topic_specs
from app.dev.devstack import DevStack, DevStackError, ensure_topics
from app.dev.producer import bootstrap_servers, produce
from app.settings import SETTINGS
from core import sample

WEB = f"http://127.0.0.1:{SETTINGS.web_port}"
LOG_DIR = Path(SETTINGS.datadir) / "demo"


def say(text: str = "") -> None:
    """Print a line now (the demo is watched live; a closed terminal is not an error)."""
    with contextlib.suppress(OSError):
        print(text, flush=True)


def http_get(path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET a path of the local web view (with the token when one is set)."""
    request = urllib.request.Request(WEB + path)
    if SETTINGS.web_token:
        request.add_header("Authorization", f"Bearer {SETTINGS.web_token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def wait_until(what: str, check: Any, timeout: float) -> None:
    """Poll ``check()`` until true, showing progress; raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    sys.stdout.write(f"  waiting for {what} ")
    sys.stdout.flush()
    while time.monotonic() < deadline:
        if check():
            say(" ok")
            return
        sys.stdout.write(".")
        sys.stdout.flush()
        time.sleep(0.5)
    say(" timed out")
    raise TimeoutError(f"{what} did not happen within {timeout:.0f} s (see {LOG_DIR})")


def metric_sum(name: str, **labels: str) -> float:
    """Sum of the series of a metric on ``/metrics`` with ``labels`` (-1 when unreachable)."""
    status, body = http_get("/metrics")
    if status != 200:
        return -1.0
    total = 0.0
    for line in body.decode().splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def counted_events() -> int:
    """Events the worker has processed (ok or dead-lettered), from ``/metrics``."""
    return int(metric_sum("storestream_events_total"))


#: The demo measures lift: a fifth of its shoppers are held out (the environment may say else).
DEMO_ENV = {"CONTROL_GROUP_PCT": "20"}


def start_simulator(once: bool) -> subprocess.Popen[bytes]:
    """``faust -A app simulate``, logging to the demo log dir (its progress is shown by
    :class:`LiveCounts`, one line)."""
    duration = ["--duration", "8", "--rate", "40"] if once else ["--rate", "15"]
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = open(LOG_DIR / "simulate.log", "wb")  # noqa: SIM115  closed with the process
    return subprocess.Popen(
        [sys.executable, "-m", "faust", "-A", "app", "simulate", "--shoppers", "12",
         "--buy-pct", "15", "--offer-buy-pct", "45", "--visit-stops", "6", *duration],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**DEMO_ENV, **os.environ},
    )


class LiveCounts:
    """The shoppers' positions matched and the offers delivered, from the worker's
    ``/metrics``, refreshed in place on a terminal (a new line when they change, otherwise)."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self.shown = ""

    @staticmethod
    def delivered() -> int:
        """Offers the worker pushed to Redis (each once: a redelivered offer is a duplicate)."""
        return int(metric_sum("storestream_offers_delivered_total", sink="redis",
                              outcome="delivered"))

    def line(self) -> str:
        positions = int(metric_sum("storestream_events_total", topic=SETTINGS.topics.locations))
        emitted = int(metric_sum("storestream_offers_total"))
        delivered = self.delivered()
        if min(positions, emitted, delivered) < 0:
            return "  offers: the worker does not answer /metrics"
        return (f"  positions matched: {positions:,}   offers emitted: {emitted:,}   "
                f"offers delivered: {delivered:,}")

    def refresh(self) -> None:
        """Show the counts now (on a terminal: in place of the previous ones)."""
        line = self.line()
        if self.tty:
            sys.stdout.write("\r" + line.ljust(len(self.shown)))
            sys.stdout.flush()
        elif line != self.shown:
            say(line)
        self.shown = line

    def done(self) -> None:
        """End the refreshed line (on a terminal)."""
        if self.tty and self.shown:
            say()
            self.shown = ""


def start_worker(broker_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``faust -A app worker`` in its own process group, logging to the demo log dir, with
    the settings its broker needs (``DevStack.worker_env``) unless the environment has them."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = open(LOG_DIR / "worker.log", "wb")  # noqa: SIM115  closed with the process
    return subprocess.Popen(
        [sys.executable, "-m", "faust", "-A", "app", "worker", "-l", "info"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**(broker_env or {}), **DEMO_ENV, **os.environ},
    )


def customers(user_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Each customer's document from the web view."""
    out = {}
    for user_id in user_ids:
        status, body = http_get(f"/customers/{user_id}/")
        if status == 200:
            out[user_id] = orjson.loads(body)
    return out


def table(title: str, header: list[str], rows: list[list[Any]]) -> str:
    """A boxed terminal table."""
    drawn = AsciiTable([header, *[[str(c) for c in row] for row in rows]], title=f" {title} ")
    return str(drawn.table)


def print_sales_totals(docs: dict[str, dict[str, Any]]) -> None:
    """The recipe's ``sales_totals``."""
    names = sorted(docs)
    say(table("sales_totals", ["USER_ID", "TOTAL", "REWARD_LEVEL"],
              [[n, f"{docs[n]['total']:.2f}", docs[n]["reward_level"]] for n in names]))


def print_promotions(docs: dict[str, dict[str, Any]]) -> None:
    """The recipe's ``promotion_*`` tables: who qualifies, with the watched products bought."""
    names = sorted(docs)
    for campaign in ("french_poodle", "loose_leaf"):
        rows = [[n, "[" + ", ".join(docs[n]["promotions"][campaign]) + "]", campaign]
                for n in names if campaign in docs[n]["promotions"]]
        say(table(f"promotion_{campaign}", ["USER_ID", "PRODUCTS", "PROMOTION_NAME"], rows))


def print_recipe_tables(docs: dict[str, dict[str, Any]]) -> None:
    """The recipe's four tables, from our web view."""
    names = sorted(docs)
    print_sales_totals(docs)
    say(table("caffeine_index", ["USER_ID", "TOTAL", "SEQUENCE", "NEXT_ONE_FREE"],
              [[n, docs[n]["coffee"]["total"], docs[n]["coffee"]["sequence"],
                str(docs[n]["coffee"]["next_one_free"]).lower()] for n in names]))
    print_promotions(docs)


def replay(events: list[sample.SampleEvent]) -> int:
    """Produce sample events to the (prefixed) topics."""
    records = [(SETTINGS.topics.name(e.topic), e.key, e.value) for e in events]
    return len(asyncio.run(produce(SETTINGS.broker_url, records,
                                   partitioner=SETTINGS.key_partitioner)))


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(once: bool = False) -> int:
    """Run the demo until Ctrl-C (or, with ``once``, stop after showing the tables)."""
    for stop in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # the terminal closing too
        signal.signal(stop, _interrupt)
    say("storestream demo: embedded broker + redis, one worker, the ksqlDB loyalty recipe")
    try:
        stack = DevStack.from_urls(SETTINGS.broker_url, SETTINGS.redis_url).start()
    except DevStackError as exc:
        say(f"cannot start the embedded stack: {exc}")
        return 2
    worker: subprocess.Popen[bytes] | None = None
    simulator: subprocess.Popen[bytes] | None = None
    counts: LiveCounts | None = None
    try:
        say(f"  broker {stack.broker_url}   redis {stack.redis_url}   (in memory: nothing "
            "survives a restart)")
        asyncio.run(ensure_topics(bootstrap_servers(SETTINGS.broker_url),
                                  topic_specs(SETTINGS)))
        worker = start_worker(stack.worker_env)
        wait_until("the worker to join and recover (GET /health)",
                   lambda: worker is not None and worker.poll() is None
                   and http_get("/health")[0] == 200, timeout=120)

        events = list(sample.recipe_events(include_dog=False))
        produced = replay(events)
        say(f"  replayed {produced} events of the recipe (users, products, purchases, the "
            "coffee price rise)")
        wait_until("every event to be processed", lambda: counted_events() >= produced, 60)
        user_ids = [name for _, name in sample.USERS]
        print_recipe_tables(customers(user_ids))

        say("\nKris will never get any rewards at that rate! Let's buy him a dog:")
        dog = [e for e in sample.recipe_events() if e.value.get("purchase_id") == "p999"]
        replay(dog)
        wait_until("the dog purchase", lambda: counted_events() >= produced + 1, 60)
        docs = customers(user_ids)
        print_sales_totals(docs)
        print_promotions(docs)  # Kris, with a beret and now a dog, is a french poodle lover

        say("\nThe store: 48 displays in six aisles, five promotions, shoppers walking about")
        simulator = start_simulator(once)
        counts = LiveCounts()
        if once:
            while simulator.poll() is None:
                counts.refresh()
                time.sleep(1)
            counts.done()
            wait_until("offers to reach the shoppers", lambda: counts.delivered() > 0, 30)
            counts.refresh()
            counts.done()

        auth = ' -H "Authorization: Bearer $WEB_TOKEN"' if SETTINGS.web_token else ""
        say(f"\nLive store page: {WEB}/" + ("?token=$WEB_TOKEN" if SETTINGS.web_token else ""))
        say(f"Web view: {WEB}")
        say(f"  curl{auth} {WEB}/customers/kris/")
        say(f"  curl{auth} {WEB}/table/spend/      (Faust's built-in table view)")
        say(f"  curl {WEB}/health   curl {WEB}/metrics")
        if once:
            return 0
        say(f"Logs: {LOG_DIR}.  Press Ctrl-C to stop.")
        walking = True
        while True:
            if walking and simulator.poll() not in (None, 0):
                walking = False
                counts.done()
                say(f"  the shoppers stopped walking (exit {simulator.returncode}): "
                    f"{LOG_DIR / 'simulate.log'}")
            counts.refresh()
            time.sleep(1)
    except KeyboardInterrupt:
        if counts is not None:
            counts.done()
    except TimeoutError as exc:
        say(f"demo failed: {exc}")
        return 1
    finally:
        for stop in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a second Ctrl-C, or the
            signal.signal(stop, signal.SIG_IGN)  # terminal closing, must not cut this short
        say("stopping...")
        for process in (simulator, worker):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
        stack.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(once="--once" in sys.argv[1:]))
