"""The event bus: publish an envelope to a topic with a key; consume a topic as a group.

Two implementations behind one small interface, chosen by ``CJLLM_BUS_URL``:
``memory://`` (in-process, asyncio) and ``kafka://host:port[,host:port]`` (aiokafka).
Delivery is at-least-once on both: a handler that raises leaves the message uncommitted,
so it is delivered again (Kafka: to whichever group member owns the partition next);
consumers de-duplicate on ``correlation_id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlparse

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import InvalidTopicError, KafkaError, MessageSizeTooLargeError

from cjllm.contracts import EventEnvelope

log = logging.getLogger(__name__)

Handler = Callable[[EventEnvelope], Awaitable[None]]


class BusError(RuntimeError):
    """Publishing failed; the caller keeps the event (e.g. in its outbox) and tries again."""


class EventRejected(BusError):
    """The bus will never take this event as it is (too large, a topic it refuses): trying
    again cannot help, so the caller sets it aside instead."""


class EventBus(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def publish(self, topic: str, key: str, envelope: EventEnvelope) -> None:
        """Return only once the bus has durably accepted the event; raise BusError otherwise."""
        ...

    def subscribe(self, topic: str, group: str, handler: Handler) -> None:
        """Register ``handler`` for ``topic`` in consumer ``group`` (call before ``start``)."""
        ...


def bus_from_url(url: str, *, idempotent_producer: bool = False) -> EventBus:
    scheme = urlparse(url).scheme
    if scheme == "memory":
        return MemoryBus()
    if scheme == "kafka":
        servers = url.split("://", 1)[1].strip("/")
        return KafkaBus(servers, idempotent_producer=idempotent_producer)
    raise ValueError(f"CJLLM_BUS_URL: unknown scheme {scheme!r} (use memory:// or kafka://)")


# --------------------------------------------------------------------------- in-process


@dataclass
class _Group:
    handler: Handler
    pending: deque[tuple[str, bytes]] = field(default_factory=deque)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class MemoryBus:
    """In-process bus. Each (topic, group) gets every message once, in publish order.

    Messages are stored as JSON bytes, as on Kafka, so handlers see a fresh envelope.
    A message is removed only after its handler returns: a handler that raises gets it
    again after ``redelivery_delay`` seconds, and one cancelled by ``stop()`` (a consumer
    dying mid-message) leaves it at the head for the next ``start()``.
    """

    def __init__(self, redelivery_delay: float = 0.05) -> None:
        self._groups: dict[str, dict[str, _Group]] = defaultdict(dict)
        self._redelivery_delay = redelivery_delay
        self._running = False

    async def start(self) -> None:
        self._running = True
        for groups in self._groups.values():
            for group in groups.values():
                self._start_group(group)

    async def stop(self) -> None:
        self._running = False
        tasks = [g.task for gs in self._groups.values() for g in gs.values() if g.task]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for gs in self._groups.values():
            for g in gs.values():
                g.task = None

    async def publish(self, topic: str, key: str, envelope: EventEnvelope) -> None:
        raw = envelope.to_bytes()
        for group in self._groups[topic].values():
            group.pending.append((key, raw))
            group.idle.clear()
            group.wakeup.set()

    def subscribe(self, topic: str, group: str, handler: Handler) -> None:
        existing = self._groups[topic].get(group)
        if existing is not None:
            existing.handler = handler  # a new group member takes over undelivered messages
            return
        entry = _Group(handler)
        entry.idle.set()
        self._groups[topic][group] = entry
        if self._running:
            self._start_group(entry)

    async def drain(self) -> None:
        """Wait until every subscribed group has handled everything published so far."""
        for groups in list(self._groups.values()):
            for group in list(groups.values()):
                await group.idle.wait()

    def _start_group(self, group: _Group) -> None:
        if group.task is None:
            group.task = asyncio.create_task(self._consume(group))

    async def _consume(self, group: _Group) -> None:
        while True:
            if not group.pending:
                group.idle.set()
                group.wakeup.clear()
                await group.wakeup.wait()
                continue
            key, raw = group.pending[0]
            try:
                await group.handler(EventEnvelope.from_bytes(raw))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("bus handler failed; redelivering (key=%s)", key)
                await asyncio.sleep(self._redelivery_delay)
                continue
            group.pending.popleft()


# --------------------------------------------------------------------------- Kafka


class KafkaBus:
    """aiokafka bus: ``acks="all"``; offsets committed only after the handler succeeds.

    ``idempotent_producer`` asks for ``enable_idempotence``; brokers without
    ``InitProducerId`` (e.g. tansu's memory storage) make the bus fall back to a plain
    producer with a logged warning instead of failing to start.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        idempotent_producer: bool = False,
        client_id: str = "cjllm",
    ) -> None:
        self._servers = bootstrap_servers
        self._idempotent = idempotent_producer
        self._client_id = client_id
        self._producer: AIOKafkaProducer | None = None
        self._subs: list[tuple[str, str, Handler]] = []
        self._consumers: list[AIOKafkaConsumer] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._producer = await self._start_producer()
        for topic, group, handler in self._subs:
            consumer = AIOKafkaConsumer(
                topic,
                bootstrap_servers=self._servers,
                group_id=group,
                client_id=self._client_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
            )
            await consumer.start()
            self._consumers.append(consumer)
            self._tasks.append(asyncio.create_task(self._consume(consumer, handler)))

    async def _start_producer(self) -> AIOKafkaProducer:
        if self._idempotent:
            producer = AIOKafkaProducer(
                bootstrap_servers=self._servers,
                client_id=self._client_id,
                acks="all",
                enable_idempotence=True,
            )
            try:
                await producer.start()
                return producer
            except KafkaError as exc:
                log.warning(
                    "broker refused an idempotent producer (%s); using a plain acks=all "
                    "producer. Delivery stays at-least-once; consumers de-duplicate.",
                    exc,
                )
                with contextlib.suppress(KafkaError):
                    await producer.stop()
        producer = AIOKafkaProducer(
            bootstrap_servers=self._servers, client_id=self._client_id, acks="all"
        )
        await producer.start()
        return producer

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for consumer in self._consumers:
            await consumer.stop()
        self._consumers.clear()
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def publish(self, topic: str, key: str, envelope: EventEnvelope) -> None:
        if self._producer is None:
            raise BusError("KafkaBus.publish before start()")
        try:
            await self._producer.send_and_wait(topic, envelope.to_bytes(), key=key.encode())
        except (MessageSizeTooLargeError, InvalidTopicError) as exc:
            raise EventRejected(f"{topic} refuses this event: {exc}") from exc
        except KafkaError as exc:
            raise BusError(f"publish to {topic} failed: {exc}") from exc

    def subscribe(self, topic: str, group: str, handler: Handler) -> None:
        self._subs.append((topic, group, handler))

    async def _consume(self, consumer: AIOKafkaConsumer, handler: Handler) -> None:
        from aiokafka import TopicPartition

        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=100)
            for tp, messages in batches.items():
                for msg in messages:
                    try:
                        envelope = EventEnvelope.from_bytes(msg.value)
                    except ValueError:
                        log.error("dropping undecodable message at %s:%s", tp, msg.offset)
                    else:
                        try:
                            await handler(envelope)
                        except asyncio.CancelledError:
                            raise
                        except Exception:
                            log.exception("bus handler failed at %s:%s; re-reading", tp, msg.offset)
                            consumer.seek(tp, msg.offset)
                            await asyncio.sleep(0.1)
                            break
                    await consumer.commit({TopicPartition(tp.topic, tp.partition): msg.offset + 1})
