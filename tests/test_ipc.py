"""Messages over a socket pair: large arrays between processes, a clean end of stream, and messages that
several threads queue, sent together."""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from whisper_endpoint.errors import AudioDecodeError, WhisperEndpointError
from whisper_endpoint.ipc import MAX_PARTS_PER_SEND, BatchingSender, MessageSocket, picklable, spawn_child


def _echo_doubled(conn: MessageSocket) -> None:
    while (message := conn.recv()) is not None:
        conn.send(message * 2)


def test_windows_cross_to_a_spawned_process_and_back_intact() -> None:
    here, child = spawn_child(_echo_doubled, (), "echo")
    try:
        rng = np.random.default_rng(0)
        for size in (0, 1, 480_000, 4_000_000):  # up to 16 MB, far more than a socket buffer
            window = rng.normal(size=size).astype(np.float32)
            here.send(window)
            assert np.array_equal(here.recv(), window * 2)
        here.send(None)
        child.join(timeout=30)
        assert child.exitcode == 0
        with pytest.raises(EOFError):  # the child's end closed with it
            here.recv()
    finally:
        child.kill()
        here.close()


def _send_own_name(conn: MessageSocket) -> None:
    conn.send(Path("/proc/self/comm").read_text().strip())


@pytest.mark.skipif(not Path("/proc/self/comm").exists(), reason="process names are read from Linux's /proc")
def test_a_spawned_child_goes_by_its_name_in_proc() -> None:
    here, child = spawn_child(_send_own_name, (), "whisper-front-end")
    try:
        assert here.recv() == "whisper-front-e"  # the kernel keeps 15 characters; unnamed, it is "python3"
        child.join(timeout=30)
        assert child.exitcode == 0
    finally:
        child.kill()
        here.close()


def test_shutdown_wakes_a_reader_with_eof() -> None:
    here, there = MessageSocket.pair()
    here.shutdown()
    with pytest.raises(EOFError):
        here.recv()
    here.close()
    there.close()


def test_exceptions_that_do_not_pickle_keep_their_text() -> None:
    class Local(Exception):  # a class defined in a function cannot be pickled
        pass

    kept = AudioDecodeError("bad", param="file")
    assert picklable(kept) is kept
    replaced = picklable(Local("lost class"))
    assert type(replaced) is WhisperEndpointError and "Local: lost class" in str(replaced)


class _ShortSendSocket:
    """Its first sends are cut short to `cuts` bytes each, as a signal cuts a send; then it sends what it is
    given. Counts its calls and the most parts one call was given."""

    def __init__(self, peer: socket.socket, cuts: list[int]) -> None:
        self.peer = peer
        self.cuts = cuts
        self.calls = 0
        self.most_parts = 0

    def sendmsg(self, parts: list[memoryview]) -> int:
        self.calls += 1
        self.most_parts = max(self.most_parts, len(parts))
        if not self.cuts:
            return self.peer.sendmsg(parts)
        sent = b"".join(parts)[: self.cuts.pop(0)]
        self.peer.sendall(sent)
        return len(sent)


def test_a_send_cut_short_sends_the_rest() -> None:
    left, right = socket.socketpair()
    right.settimeout(10)  # a missing rest fails the test instead of hanging it
    short = _ShortSendSocket(left, [5, 5, 400])  # the third cut falls inside the first array
    sender, receiver = MessageSocket(short), MessageSocket(right)  # type: ignore[arg-type]
    message = {"samples": np.arange(1000, dtype=np.float32), "odd": np.arange(3, dtype=np.int16), "text": "x" * 99}
    sender.send(message)
    got = receiver.recv()
    assert np.array_equal(got["samples"], message["samples"]) and np.array_equal(got["odd"], message["odd"])
    assert got["text"] == message["text"] and short.most_parts > 1  # the arrays went as parts of their own
    left.close()
    receiver.close()


def test_many_arrays_cross_intact_aligned_and_in_more_sends_than_one() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    left.settimeout(10)
    right.settimeout(10)
    counted = _ShortSendSocket(left, [])
    sender, receiver = MessageSocket(counted), MessageSocket(right)  # type: ignore[arg-type]
    rng = np.random.default_rng(1)
    dtypes = (np.float32, np.int16, np.float64, np.uint8)
    arrays = [rng.normal(size=i % 7).astype(dtypes[i % 4]) for i in range(1500)]  # 3,000 parts with padding
    strided = np.arange(20, dtype=np.float32)[::2]  # not contiguous: pickled in band
    thread = threading.Thread(target=sender.send, args=((arrays, strided),))
    thread.start()
    got, got_strided = receiver.recv()
    thread.join(timeout=10)
    assert len(got) == len(arrays)
    assert all(a.dtype == b.dtype and np.array_equal(a, b) for a, b in zip(got, arrays, strict=True))
    assert all(a.flags.aligned for a in got) and np.array_equal(got_strided, strided)
    assert counted.calls > 1 and counted.most_parts <= MAX_PARTS_PER_SEND
    left.close()
    receiver.close()


BIG = b"x" * 8_000_000  # far more than a socket's buffer: its send lasts until it is read


def busy_sender(
    max_items: int, on_error: Callable[[list[Any], BaseException], None] | None = None
) -> tuple[socket.socket, MessageSocket, BatchingSender]:
    """A sender still sending BIG, so that what is put next queues behind it; its socket and the receiver."""
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    right.settimeout(10)
    sender = BatchingSender(MessageSocket(left), "test-sender", max_items, on_error)
    sender.put(BIG)
    assert select.select([right], [], [], 10)[0], "the first message never started"
    return left, MessageSocket(right), sender


def test_what_is_queued_during_a_send_goes_as_one_message_in_order() -> None:
    left, receiver, sender = busy_sender(max_items=64)
    for i in range(99):  # queued while the first is on its way
        sender.put(i)
    assert receiver.recv() == [BIG]
    assert receiver.recv() == list(range(64))  # at most max_items a message
    assert receiver.recv() == list(range(64, 99))
    sender.close(then="stop")
    assert receiver.recv() == "stop"
    left.close()
    receiver.close()


def test_items_that_cannot_be_sent_are_handed_to_on_error() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    right.close()  # the other end is gone
    failed: list[tuple[list[object], BaseException]] = []
    done = threading.Event()

    def on_error(items: list[object], exc: BaseException) -> None:
        failed.append((items, exc))
        done.set()

    sender = BatchingSender(MessageSocket(left), "test-sender", max_items=8, on_error=on_error)
    sender.put("call")
    assert done.wait(10)
    assert failed[0][0] == ["call"] and isinstance(failed[0][1], OSError)
    sender.close()
    left.close()


def test_an_item_that_does_not_pickle_fails_alone() -> None:
    failed: list[tuple[list[object], BaseException]] = []
    left, receiver, sender = busy_sender(max_items=8, on_error=lambda i, e: failed.append((i, e)))
    lock = threading.Lock()  # locks do not pickle
    for item in ("before", lock, "after"):  # queued behind BIG, so they would go as one message
        sender.put(item)
    assert receiver.recv() == [BIG]
    assert [receiver.recv(), receiver.recv()] == [["before"], ["after"]]  # one by one once the batch failed
    sender.close()
    assert len(failed) == 1 and failed[0][0] == [lock] and "pickle" in str(failed[0][1])
    left.close()
    receiver.close()
