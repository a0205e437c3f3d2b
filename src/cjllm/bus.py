"""The event bus: publish an envelope to a topic with a key; consume a topic as a group.

Two implementations behind one small interface, chosen by ``CJLLM_BUS_URL``:
``memory://`` (in-process, asyncio) and ``kafka://host:port[,host:port]`` (aiokafka).
Delivery is at-least-once on both: a handler that raises leaves the message uncommitted,
so it is delivered again (Kafka: to whichever group member owns the partition next);
consumers de-duplicate on ``correlation_id``.

Both work in groups where it pays: :meth:`EventBus.publish_many` sends many messages and waits
for their acknowledgements together, and a handler subscribed with
:meth:`EventBus.subscribe_many` gets the messages waiting for it (in order) in one call, so a
consumer can record them in one transaction. If it raises, all of them are delivered again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlparse

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import InvalidTopicError, KafkaError, MessageSizeTooLargeError

from cjllm.contracts import EventEnvelope

log = logging.getLogger(__name__)

Handler = Callable[[EventEnvelope], Awaitable[None]]
BatchHandler = Callable[[Sequence[EventEnvelope]], Awaitable[None]]
Message = tuple[str, EventEnvelope]
"""A message to publish: its key and its envelope."""

MAX_BATCH = 500
"""Messages handed to a batch handler at once, at most."""


def one_at_a_time(handler: Handler) -> BatchHandler:
    """A batch handler that calls ``handler`` for each message in turn."""

    async def each(envelopes: Sequence[EventEnvelope]) -> None:
        for envelope in envelopes:
            await handler(envelope)

    return each


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

    async def publish_many(self, topic: str, messages: Sequence[Message]) -> list[BusError | None]:
        """Publish ``messages`` together; one outcome each, in order: None once the bus
        durably accepted it, else why not (:class:`EventRejected` for one it never will)."""
        ...

    def subscribe(self, topic: str, group: str, handler: Handler) -> None:
        """Register ``handler`` for ``topic`` in consumer ``group`` (call before ``start``)."""
        ...

    def subscribe_many(self, topic: str, group: str, handler: BatchHandler) -> None:
        """As :meth:`subscribe`, with ``handler`` given every waiting message at once (at
        most :data:`MAX_BATCH`, in order); if it raises, they are all delivered again."""
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
    handler: BatchHandler
    max_batch: int
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
        await self.publish_many(topic, [(key, envelope)])

    async def publish_many(self, topic: str, messages: Sequence[Message]) -> list[BusError | None]:
        raws = [(key, envelope.to_bytes()) for key, envelope in messages]
        for group in self._groups[topic].values():
            group.pending.extend(raws)
            group.idle.clear()
            group.wakeup.set()
        return [None] * len(raws)

    def subscribe(self, topic: str, group: str, handler: Handler) -> None:
        self._subscribe(topic, group, one_at_a_time(handler), 1)

    def subscribe_many(self, topic: str, group: str, handler: BatchHandler) -> None:
        self._subscribe(topic, group, handler, MAX_BATCH)

    def _subscribe(self, topic: str, group: str, handler: BatchHandler, max_batch: int) -> None:
        existing = self._groups[topic].get(group)
        if existing is not None:
            # a new group member takes over undelivered messages
            existing.handler, existing.max_batch = handler, max_batch
            return
        entry = _Group(handler, max_batch)
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
            batch = [group.pending[i] for i in range(min(group.max_batch, len(group.pending)))]
            try:
                await group.handler([EventEnvelope.from_bytes(raw) for _, raw in batch])
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("bus handler failed; redelivering (key=%s)", batch[0][0])
                await asyncio.sleep(self._redelivery_delay)
                continue
            for _ in batch:
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
        self._subs: list[tuple[str, str, BatchHandler, int]] = []
        self._consumers: list[AIOKafkaConsumer] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._producer = await self._start_producer()
        for topic, group, handler, max_batch in self._subs:
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
            self._tasks.append(asyncio.create_task(self._consume(consumer, handler, max_batch)))

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
        (error,) = await self.publish_many(topic, [(key, envelope)])
        if error is not None:
            raise error

    async def publish_many(self, topic: str, messages: Sequence[Message]) -> list[BusError | None]:
        """Hand every message to the producer, then wait for all the acknowledgements."""
        if self._producer is None:
            raise BusError("KafkaBus.publish before start()")
        sent: list[asyncio.Future[Any] | BusError] = []
        for key, envelope in messages:
            try:
                sent.append(await self._producer.send(topic, envelope.to_bytes(), key=key.encode()))
            except KafkaError as exc:
                sent.append(_bus_error(topic, exc))
        waiting = [s for s in sent if not isinstance(s, BusError)]
        acks = iter(await asyncio.gather(*waiting, return_exceptions=True))
        outcomes: list[BusError | None] = []
        for s in sent:
            if isinstance(s, BusError):
                outcomes.append(s)
                continue
            ack = next(acks)
            if isinstance(ack, KafkaError):
                outcomes.append(_bus_error(topic, ack))
            elif isinstance(ack, BaseException):
                raise ack
            else:
                outcomes.append(None)
        return outcomes

    def subscribe(self, topic: str, group: str, handler: Handler) -> None:
        self._subs.append((topic, group, one_at_a_time(handler), 1))

    def subscribe_many(self, topic: str, group: str, handler: BatchHandler) -> None:
        self._subs.append((topic, group, handler, MAX_BATCH))

    async def _consume(
        self, consumer: AIOKafkaConsumer, handler: BatchHandler, max_batch: int
    ) -> None:
        from aiokafka import TopicPartition

        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=max_batch)
            for tp, messages in batches.items():
                envelopes = []
                for msg in messages:
                    try:
                        envelopes.append(EventEnvelope.from_bytes(msg.value))
                    except ValueError:
                        log.error("dropping undecodable message at %s:%s", tp, msg.offset)
                if envelopes:
                    try:
                        await handler(envelopes)
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        log.exception(
                            "bus handler failed at %s:%s; re-reading", tp, messages[0].offset
                        )
                        consumer.seek(tp, messages[0].offset)
                        await asyncio.sleep(0.1)
                        continue
                last = messages[-1].offset + 1
                await consumer.commit({TopicPartition(tp.topic, tp.partition): last})


def _bus_error(topic: str, exc: KafkaError) -> BusError:
    if isinstance(exc, MessageSizeTooLargeError | InvalidTopicError):
        return EventRejected(f"{topic} refuses this event: {exc}")
    return BusError(f"publish to {topic} failed: {exc}")
