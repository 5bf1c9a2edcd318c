"""Messages between processes with one blocking system call per message part.

`multiprocessing`'s Connection reads a message one pipe buffer (64 KB) at a time and gives up the
interpreter lock for each read; in a process whose other threads are busy in Python, every read then
waits for the lock again (up to the 5 ms switch interval). A 30 s window of samples (1.9 MB) took
about 150 ms to arrive that way with one busy thread (benchmarks/pipe_convoy.py). A stream socket
hands over a whole message in one call each way (`MSG_WAITALL` on receive; a blocking send of a
Unix socket returns when all is sent), so the lock is given up and retaken a few times per message.

Arrays travel out of band (pickle protocol 5): the sender's socket reads them where they lie, and the
receiver's arrays are views of the one buffer the message arrived in. Pickling them in band copied every
window's samples twice under the interpreter lock (into the pickle, out of it), in the server process
whose one lock carries every upload (docs/history/benchmarks-2026-11.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import pickle
import queue
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from typing import Any

from whisper_endpoint.errors import WhisperEndpointError

_HEADER = struct.Struct("!QI")  # the pickle's length in bytes, how many out-of-band buffers follow it
# (then each buffer's length, 8 bytes each; then the pickle; then the buffers)
BUFFER_ALIGN_BYTES = 16  # each buffer starts at such an offset in the message, as numpy's allocations do
MAX_PARTS_PER_SEND = 512  # under the kernel's limit on the pieces of one sendmsg (IOV_MAX, 1024 on Linux)
_PR_SET_NAME = 15  # prctl's option that names the calling thread (linux/prctl.h)


class MessageSocket:
    """One end of a connection that carries pickled objects. Sending is not locked: callers that send
    from several threads hold a lock of their own. Picklable to a spawned child (multiprocessing
    passes the socket's descriptor)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    @classmethod
    def pair(cls) -> tuple[MessageSocket, MessageSocket]:
        left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        return cls(left), cls(right)

    @classmethod
    def connect(cls, address: str) -> MessageSocket:
        """A connection to a listening Unix socket at `address` (a path)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(address)
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    def send(self, message: object) -> None:
        buffers: list[pickle.PickleBuffer] = []
        payload = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
        views = [b.raw() for b in buffers]
        lengths = [v.nbytes for v in views]
        parts: list[memoryview | bytes] = [
            _HEADER.pack(len(payload), len(views)),
            struct.pack(f"!{len(lengths)}Q", *lengths),
            payload,
        ]
        end = len(payload)
        for offset, view in zip(_buffer_offsets(len(payload), lengths), views, strict=True):
            parts += [bytes(offset - end), view]
            end = offset + view.nbytes
        self._send_parts(parts)

    def _send_parts(self, parts: list[memoryview | bytes]) -> None:
        """Every byte of `parts`, in order, with no joined copy: a message can be 100 MB of chunks. More
        than one call where a signal cuts a send short or there are more parts than one call takes."""
        views = [memoryview(p) for p in parts if len(p)]
        first = 0
        while first < len(views):
            sent = self._sock.sendmsg(views[first : first + MAX_PARTS_PER_SEND])
            while sent:
                if sent >= views[first].nbytes:
                    sent -= views[first].nbytes
                    first += 1
                else:
                    views[first] = views[first][sent:]
                    sent = 0

    def recv(self) -> Any:
        """The next message; EOFError once the other end has closed."""
        size, count = _HEADER.unpack(self._recv_exactly(_HEADER.size))
        lengths = list(struct.unpack(f"!{count}Q", self._recv_exactly(8 * count))) if count else []
        offsets = _buffer_offsets(size, lengths)
        body = memoryview(self._recv_exactly(offsets[-1] + lengths[-1] if count else size))
        return pickle.loads(body[:size], buffers=[body[o : o + n] for o, n in zip(offsets, lengths, strict=True)])

    def _recv_exactly(self, size: int) -> bytearray:
        buffer = bytearray(size)
        view = memoryview(buffer)
        received = 0
        while received < size:  # more than one call only when a signal interrupts the wait
            count = self._sock.recv_into(view[received:], size - received, socket.MSG_WAITALL)
            if count == 0:
                raise EOFError("the other end closed the connection")
            received += count
        return buffer

    def shutdown(self) -> None:
        """Wake a thread blocked in recv (it gets EOFError) without closing the descriptor under it."""
        with contextlib.suppress(OSError):  # not connected any more
            self._sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._sock.close()


def _buffer_offsets(pickle_bytes: int, lengths: list[int]) -> list[int]:
    """Where each out-of-band buffer starts in a message's body, after the pickle, each aligned."""
    offsets, end = [], pickle_bytes
    for length in lengths:
        start = -(-end // BUFFER_ALIGN_BYTES) * BUFFER_ALIGN_BYTES
        offsets.append(start)
        end = start + length
    return offsets


_NOTHING = object()
PEER_GONE = (OSError, ValueError)  # what a send raises once the other end is gone (or this one closed)


class BatchingSender:
    """Sends, from a thread of its own, what any thread `put`s: everything queued while the last message was
    on its way goes as one message (a list, at most `max_items`). Threads that each sent their own message
    under a lock queued on that lock, and each woke into a process whose other threads held the interpreter
    lock: through HTTP on a GPU, 226 of the engine process's threads were seen waiting to send their replies
    while vLLM's batch emptied (docs/history). `on_error(items, exc)` learns of items that could not
    be sent."""

    def __init__(
        self,
        conn: MessageSocket,
        name: str,
        max_items: int,
        on_error: Callable[[list[Any], BaseException], None] | None = None,
    ) -> None:
        self._conn = conn
        self._max_items = max_items
        self._on_error = on_error
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, item: object) -> None:
        self._queue.put(item)

    def close(self, then: object = _NOTHING, timeout_s: float = 30.0) -> None:
        """Send what is queued, then `then` (where given) as a message of its own, and stop."""
        self._queue.put(_Last(then))
        self._thread.join(timeout=timeout_s)

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self._max_items and not isinstance(batch[-1], _Last):
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            last = batch.pop() if isinstance(batch[-1], _Last) else None
            if batch:
                self._send(batch, batch)
            del batch  # not held while the next item is awaited: windows in it may be large
            if last is not None:
                if last.message is not _NOTHING:
                    self._send(last.message, [])
                return

    def _send(self, message: object, items: list[Any]) -> None:
        try:
            self._conn.send(message)
        except PEER_GONE as exc:
            self._failed(items, exc)
        except Exception as exc:  # an item that does not pickle: the others go one by one, so only it fails
            if len(items) < 2:
                self._failed(items, exc)
                return
            for item in items:
                self._send([item], [item])

    def _failed(self, items: list[Any], exc: BaseException) -> None:
        if self._on_error is not None and items:
            self._on_error(items, exc)


@dataclass(frozen=True)
class _Last:
    message: object


def spawn_child(
    target: Callable[..., None], args: tuple[Any, ...], name: str, daemon: bool = False
) -> tuple[MessageSocket, BaseProcess]:
    """A started child process running `target(connection, *args)`, and this end of the connection.
    Spawned, never forked: the parent holds threads, and may hold CUDA state. The child goes by `name` in
    `ps`, `top` and /proc (its first 15 characters), where every spawned Python is otherwise "python3"."""
    conn, child_end = MessageSocket.pair()
    process = multiprocessing.get_context("spawn").Process(
        target=_named_child, args=(name, target, child_end, *args), name=name, daemon=daemon
    )
    process.start()
    child_end.close()  # the child has its own copy; EOF reaches us when the child's closes
    return conn, process


def _named_child(name: str, target: Callable[..., None], *args: Any) -> None:
    set_process_name(name)
    target(*args)


def set_process_name(name: str) -> None:
    """Name this process's main thread for the kernel (Linux's PR_SET_NAME, 15 characters at most); nothing
    where that call is missing."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux, or no C library to call
        ctypes.CDLL(None).prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def picklable(exc: BaseException) -> BaseException:
    """The exception itself if it survives pickling, else a WhisperEndpointError with its text."""
    try:
        pickle.dumps(exc)
        return exc
    except Exception:  # some library errors do not pickle: keep their text
        return WhisperEndpointError(f"{type(exc).__name__}: {exc}")
