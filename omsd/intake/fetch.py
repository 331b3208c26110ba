"""Taking a batch of messages from a consumer for one turn of the supervisor loop."""

from __future__ import annotations

from confluent_kafka import Consumer, Message

# Messages staged per turn of the supervisor loop: about BATCH_BYTES, so that completed files reach idle
# workers promptly (a 64 MiB batch kept workers waiting ~0.1 s for their next file), and at most MAX_BATCH,
# so that a turn of small files (about 0.1 ms each to stage and register) ends before the workers have
# done the files they were sent ahead (128 per turn left them idle a third of the time; 64 made the
# small-file rate 30 % higher), yet the loop's own work per turn stays negligible.
BATCH_BYTES = 4 << 20
MAX_BATCH = 64


def batch_size(average_message_bytes: int) -> int:
    """How many messages to take per loop turn, given the average message size."""
    return max(1, min(MAX_BATCH, BATCH_BYTES // max(1, average_message_bytes)))


def fetch(consumer: Consumer, batch: int, timeout: float) -> list[Message]:
    """Up to ``batch`` messages; waits at most ``timeout`` for the first, none for the rest.

    (``consume`` would wait out its whole timeout unless the batch fills, which delays the one small
    file that arrives while the daemon is idle by up to the timeout.)
    """
    messages = consumer.consume(num_messages=batch, timeout=0)
    if messages or timeout <= 0:
        return messages
    first = consumer.poll(timeout)
    if first is None:
        return []
    return [first, *consumer.consume(num_messages=batch - 1, timeout=0)] if batch > 1 else [first]
