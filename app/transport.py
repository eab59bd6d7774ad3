"""The aiokafka transport with a configurable consumer fetch wait.

Faust hard-codes ``fetch_max_wait_ms=1500``; a broker that does not answer a waiting fetch
early when data arrives (the embedded Tansu, DESIGN section 7) then adds up to 1.5 s per hop.
This transport keeps everything else of Faust's consumer and only changes that wait.
"""

from __future__ import annotations

from typing import Any

from faust.transport import drivers
from faust.transport.drivers import aiokafka as faust_aiokafka

from app.settings import SETTINGS


class FetchWaitConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):  # type: ignore[misc]
    """Faust's consumer thread, with the fetch wait taken from settings."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = SETTINGS.fetch_wait_ms
        return consumer


class Consumer(faust_aiokafka.Consumer):  # type: ignore[misc]
    """Faust's aiokafka consumer using :class:`FetchWaitConsumerThread`."""

    def _new_consumer_thread(self) -> FetchWaitConsumerThread:
        return FetchWaitConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):  # type: ignore[misc]
    """``kafka://`` transport with the configurable fetch wait."""

    Consumer = Consumer


def install() -> None:
    """Make ``kafka://`` and ``aiokafka://`` URLs use this transport."""
    for scheme in ("kafka", "aiokafka"):
        drivers.TRANSPORTS.aliases[scheme] = "app.transport:Transport"
