"""A worker's local table state (``rocksdb://``) is used again only after a settled stop.

Table values are written to the local store when a batch is applied, before their changelog
records are acknowledged (at_least_once) or their transaction commits (exactly_once). A
worker that dies in between leaves local values the changelogs never get: measured on Apache
Kafka 4.4 under exactly_once, a worker SIGKILLed mid-stream and restarted on its own data
directory restored from the changelog tail, kept the newer local values (a restore keeps the
value with the newer source offsets, core/changelog.py), found the uncommitted purchases
applied already and skipped them as duplicates: the customers' totals were right, but the
loyalty events of those purchases, aborted with their transaction, were never written again,
and the changelogs lacked those purchases until the customers' next ones.

So, as Kafka Streams does under exactly_once, local state is trusted only when the previous
run stopped settled: :func:`record_stop` leaves a marker in the app directory when the worker
stops without a crash and every event it processed is in a successful commit with its output
(:attr:`app.runtime.guarantees.CommitGate.settled`); :func:`prepare` (at worker start-up,
before any table store opens) removes the marker, or, without one, deletes the local table
state, which the worker then restores from the changelogs (committed records only, under
exactly_once). A crash, a SIGKILL, a stop past ``SHUTDOWN_GRACE_S`` or a transaction
abandoned with revoked partitions costs a full restore, never a wrong count.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from app.runtime.guarantees import GATE, CommitGate

log = logging.getLogger(__name__)

#: The marker's name in the app directory (``APP_DATADIR``/v1).
MARKER = "settled-stop"


def uses_local_state(store: Any) -> bool:
    """Whether tables keep state on disk across runs (``rocksdb://``)."""
    return str(store).startswith("rocksdb:")


def prepare(appdir: Path, tabledir: Path) -> str:
    """Before tables open: ``"kept"`` (the last run stopped settled; marker removed, so a
    crash in this run is noticed), ``"deleted"`` (local state removed: restored from the
    changelogs) or ``"none"`` (nothing local)."""
    marker = appdir / MARKER
    if marker.exists():
        marker.unlink()
        return "kept"
    if tabledir.exists() and any(tabledir.iterdir()):
        log.warning("the last run did not stop settled (a crash, a kill, or output not "
                    "committed): local table state in %s deleted, restoring it from the "
                    "changelogs", tabledir)
        shutil.rmtree(tabledir)
        return "deleted"
    return "none"


def record_stop(appdir: Path, crashed: bool, gate: CommitGate = GATE) -> bool:
    """After the worker stopped: leave the marker when it stopped settled; whether it did."""
    if crashed or not gate.settled:
        log.warning("stopped unsettled (%s): the next start restores local tables from the "
                    "changelogs", "crashed" if crashed else gate.tainted
                    or f"{gate.unsettled} event(s) not in a successful commit")
        return False
    appdir.mkdir(parents=True, exist_ok=True)
    marker = appdir / MARKER
    with open(marker, "w") as out:
        out.write("the last run stopped with every processed event committed\n")
        out.flush()
        os.fsync(out.fileno())
    return True


#: What :func:`prepare` found at this process's start (empty: not run yet).
PREPARED: list[str] = []


class DataDirInUse(SystemExit):
    """Another worker holds this data directory."""


#: The lock file held by a worker on its app directory for as long as it runs.
LOCK = "worker.lock"
#: This process's lock (kept open: the lock lasts as long as the descriptor).
_HELD: list[Any] = []


def hold(appdir: Path) -> None:
    """Lock ``appdir`` for this process, or exit saying which directory is in use: two
    workers on one data directory would open the same RocksDB stores, and one starting
    after an unsettled stop would delete the other's."""
    appdir.mkdir(parents=True, exist_ok=True)
    handle = open(appdir / LOCK, "a+")  # noqa: SIM115 (held until the process ends)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise DataDirInUse(
            f"storestream: the data directory {appdir.parent} is in use by another worker; "
            "give each worker its own APP_DATADIR") from None
    _HELD.append(handle)


def on_worker_init(app: Any, command: str | None, **kwargs: Any) -> None:
    """``app.on_worker_init`` receiver: :func:`hold` then :func:`prepare` when tables are
    on disk, for the ``worker`` command only (another command run beside a worker must
    never touch its state) and once per process (Faust sends the signal twice on a
    worker's start)."""
    if command == "worker" and uses_local_state(app.conf.store) and not PREPARED:
        hold(Path(app.conf.appdir))
        PREPARED.append(prepare(Path(app.conf.appdir), Path(app.conf.tabledir)))


def on_worker_stopped(app: Any, worker_crashed: bool) -> None:
    """From the worker's last stop step: :func:`record_stop` when tables are on disk."""
    if uses_local_state(app.conf.store):
        record_stop(Path(app.conf.appdir), worker_crashed or bool(app.crashed))
