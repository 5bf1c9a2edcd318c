"""An engine in a process of its own, called over sockets: by the server (live turns) and by the front-end
processes, each of which owns its requests' audio (serving/frontend.py).

vLLM's input and output processing run in the Python process that owns the engine; in a process of its own
they share no interpreter lock with the server or with other engines, and callers only ship windows (each
window's log-mel and prompt) and get tokens back, over a socket that takes a window in one call
(whisper_endpoint.ipc). Measured (docs/history): one engine 1,470x alone against
1,351x in the server's process; two GPUs 1.34x one either way, since there the host's CPUs were the limit.
Calls are concurrent: each runs in a thread of the engine process. Calls and replies queued together cross
as one message, each way sent by a thread of its own (ipc.BatchingSender).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from whisper_endpoint.config import Settings
from whisper_endpoint.engines.base import (
    AlignInput,
    Alignment,
    Cancellation,
    DescribedEngine,
    Engine,
    EngineDescription,
    Generation,
    HandedOverWindows,
    SamplingOptions,
    WindowInput,
    let_go,
    on_cancel,
)
from whisper_endpoint.errors import EngineFailedError, EngineUnavailableError
from whisper_endpoint.ipc import PEER_GONE, BatchingSender, MessageSocket, picklable, spawn_child
from whisper_endpoint.serving.spool import create_spool

log = logging.getLogger(__name__)

EngineFactory = Callable[[Settings], Engine]  # a module-level function, so the engine process can import it
CallHandler = Callable[[str, tuple[Any, ...], Cancellation], Any]  # (method, arguments, the call's cancellation)
ABORT = "abort"  # a call entry (id, ABORT, call ids): the caller no longer wants those calls' results
MAX_CONCURRENT_CALLS = 1024  # one thread per call: a call mostly waits for its windows in the engine
MAX_WINDOWS_PER_MESSAGE = 16  # a large call goes in parts, so the engine starts on the first while the rest travel
MAX_CALLS_PER_MESSAGE = 8  # calls queued together travel as one message (up to 8 x 16 windows)
MAX_REPLIES_PER_MESSAGE = 256  # replies are tokens and scores: small
CLOSE_TIMEOUT_S = 60.0


def answer_calls(conn: MessageSocket, call: CallHandler, calls: ThreadPoolExecutor) -> None:
    """Answer the calls that arrive on `conn`, each run in a thread of `calls`, until the other end closes
    it or sends None."""

    def unsent(replies: list[Any], exc: BaseException) -> None:
        if not isinstance(exc, PEER_GONE):  # a result that does not pickle: its caller learns why
            for call_id, _, _ in replies:
                sender.put((call_id, "error", picklable(exc)))

    sender = BatchingSender(conn, "engine-replies", MAX_REPLIES_PER_MESSAGE, unsent)

    running: dict[int, Cancellation] = {}  # calls not yet answered; guarded by the interpreter (dict ops)

    def run(call_id: int, method: str, args: tuple[Any, ...]) -> None:
        try:
            reply: tuple[Any, ...] = (call_id, "ok", call(method, args, running[call_id]))
        except BaseException as exc:
            reply = (call_id, "error", picklable(exc))
        finally:
            running.pop(call_id, None)
        sender.put(reply)

    while True:
        try:
            message = conn.recv()  # a list of calls, or None: stop
        except (EOFError, OSError):  # the caller is gone
            break
        if message is None:
            break
        for call_id, method, args in message:
            if method == ABORT:
                for aborted in args:
                    if (cancellation := running.get(aborted)) is not None:
                        cancellation.set()
                continue
            running[call_id] = Cancellation()
            calls.submit(run, call_id, method, args)
    sender.close()


class EngineListener:
    """Answers calls from other processes (the front-end processes) on a Unix socket in a folder of its own
    that only this user may enter (whoever connects may have anything unpickled here): a spool folder, so a
    process killed before it could remove it has it removed by the next server to start."""

    def __init__(self, call: CallHandler, calls: ThreadPoolExecutor) -> None:
        self._folder = create_spool()  # mode 0700, locked while this process lives
        self.address = str(self._folder.path / "engine.sock")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.bind(self.address)
        except OSError as exc:  # the kernel takes paths of up to 107 bytes
            self.close()
            raise EngineUnavailableError(
                f"cannot listen on {self.address} ({exc.strerror or exc}): set TMPDIR to a shorter path"
            ) from exc
        self._sock.listen()
        self._call = call
        self._calls = calls
        self._thread = threading.Thread(target=self._accept, name="engine-listener", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._sock.accept()
            except OSError:  # closed
                return
            conn = MessageSocket(sock)
            threading.Thread(
                target=answer_calls, args=(conn, self._call, self._calls), name="engine-caller", daemon=True
            ).start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._folder.close()


def engine_handler(engine: Engine) -> CallHandler:
    """Calls answered by `engine`'s own methods. A call's windows are handed over (HandedOverWindows): neither
    the message they came in nor the call's arguments keep them, so each can go once the engine has its own
    copy. A generate call's windows may be dropped once its caller aborts it."""

    def call(method: str, args: tuple[Any, ...], cancellation: Cancellation) -> Any:
        if method == "generate":
            received, options = args
            return engine.generate(_handed_over(received), options, cancellation)
        if method == "detect_language":
            (received,) = args
            return engine.detect_language(_handed_over(received))
        return getattr(engine, method)(*args)

    return call


def _handed_over(received: list[WindowInput]) -> HandedOverWindows:
    windows = HandedOverWindows(received)
    received.clear()  # the list the message and the call's arguments hold
    return windows


def _serve(
    conn: MessageSocket,
    factory: EngineFactory,
    settings: Settings,
    env: dict[str, str],
    cpus: frozenset[int] | None,
    log_level: int,
) -> None:
    """The engine process: build the engine, then answer the server's calls and those of the front-end
    processes, each call in a thread of its own."""
    # Ctrl-C reaches every process of the terminal's group; the server drains on it and closes this
    # process when done, so the engine must outlive the signal.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.update(env)  # before the engine starts anything that reads it (CUDA_VISIBLE_DEVICES)
    if cpus:  # inherited by every process the engine starts; thread pools size themselves to it
        os.sched_setaffinity(0, cpus)
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        engine = factory(settings)
    except BaseException as exc:
        conn.send(("failed", picklable(exc)))
        return
    with ThreadPoolExecutor(max_workers=MAX_CONCURRENT_CALLS, thread_name_prefix="engine-call") as calls:
        handler = engine_handler(engine)
        listener = EngineListener(handler, calls)
        conn.send(("ready", (EngineDescription.of(engine), os.getpid(), listener.address)))
        answer_calls(conn, handler, calls)  # the server's: when it closes, the process ends
        listener.close()
        engine.close()  # the calls still running end with it


class RemoteEngine(DescribedEngine):
    """The Engine interface for an engine in another process, over a connection to it. Calls are concurrent;
    those queued together cross as one message (ipc.BatchingSender), replies likewise."""

    def __init__(self, conn: MessageSocket, description: EngineDescription) -> None:
        super().__init__(description)
        self._conn = conn
        self._ids = itertools.count()
        self._pending: dict[int, Future[Any]] = {}
        self._lock = threading.Lock()  # guards _pending and _closed
        self._closed = False
        self._calls = BatchingSender(self._conn, "engine-calls", MAX_CALLS_PER_MESSAGE, self._unsent)
        self._receiver = threading.Thread(target=self._receive, name="engine-replies", daemon=True)
        self._receiver.start()

    @classmethod
    def connect(cls, address: str, description: EngineDescription) -> RemoteEngine:
        """A connection to an engine's listener (EngineListener)."""
        return cls(MessageSocket.connect(address), description)

    @property
    def alive(self) -> bool:
        """False once the engine process has ended: every call would fail."""
        with self._lock:
            return not self._closed

    def _receive(self) -> None:
        while True:
            try:
                replies = self._conn.recv()  # a list of (call id, status, payload)
            except (EOFError, OSError):
                break
            for future, (_, status, payload) in zip(self._take(replies), replies, strict=True):
                if future is None:
                    continue
                if status == "ok":
                    future.set_result(payload)
                else:
                    future.set_exception(payload)
        with self._lock:
            self._closed = True
            pending, self._pending = self._pending, {}
        for future in pending.values():
            future.set_exception(EngineFailedError("the engine process ended; the request can be retried"))

    def _send(self, method: str, args: tuple[Any, ...]) -> tuple[int, Future[Any]]:
        future: Future[Any] = Future()
        with self._lock:
            if self._closed:
                raise EngineFailedError("the engine process has ended")
            call_id = next(self._ids)
            self._pending[call_id] = future
        self._calls.put((call_id, method, args))
        return call_id, future

    def _unsent(self, calls: list[Any], exc: BaseException) -> None:
        if isinstance(exc, PEER_GONE):
            exc = EngineFailedError("the engine process has ended")
        for future in self._take(calls):
            if future is not None:
                future.set_exception(exc)

    def _take(self, calls: list[Any]) -> list[Future[Any] | None]:
        """The futures of these calls or replies (each led by its call id), no longer pending; None for one
        already settled."""
        with self._lock:
            return [self._pending.pop(call_id, None) for call_id, _, _ in calls]

    def _call(
        self, method: str, items: Sequence[Any], *rest: Any, cancellation: Cancellation | None = None
    ) -> list[Any]:
        step = MAX_WINDOWS_PER_MESSAGE
        sent = [self._send(method, (list(items[i : i + step]), *rest)) for i in range(0, len(items), step)]
        let_go(items)  # the sender holds them until they are sent, and then nothing in this process does
        with on_cancel(cancellation, lambda: self._abort([call_id for call_id, _ in sent])):
            return [result for _, future in sent for result in future.result()]

    def _abort(self, call_ids: list[int]) -> None:
        """The engine may drop these calls' windows; each call then answers CancelledRequestError."""
        with self._lock:
            abort_id = next(self._ids)  # an entry like a call's, but nothing waits for a reply to it
        self._calls.put((abort_id, ABORT, tuple(call_ids)))

    def generate(
        self, windows: Sequence[WindowInput], options: SamplingOptions, cancellation: Cancellation | None = None
    ) -> list[Generation]:
        return self._call("generate", windows, options, cancellation=cancellation)

    def detect_language(self, windows: Sequence[WindowInput]) -> list[dict[str, float]]:
        return self._call("detect_language", windows)

    def align(self, items: Sequence[AlignInput]) -> list[Alignment]:
        return self._call("align", items)

    def close(self) -> None:
        self._calls.close(None)  # the calls queued, then the stop; an engine already gone fails them
        self._disconnect()

    def _disconnect(self) -> None:
        self._conn.shutdown()  # the receiver thread sees the end even if the other end does not close
        self._receiver.join(timeout=5)
        self._conn.close()


class ProcessEngine(RemoteEngine):
    """An engine built by `factory(settings)` in a spawned process, with `env` added to its environment and,
    where given, only `cpus` to run on. Others connect to it at `address`."""

    def __init__(
        self,
        factory: EngineFactory,
        settings: Settings,
        env: dict[str, str] | None = None,
        cpus: frozenset[int] | None = None,
    ) -> None:
        level = logging.getLogger().getEffectiveLevel()
        conn, self._process = spawn_child(_serve, (factory, settings, env or {}, cpus, level), "whisper-engine")
        try:
            status, payload = conn.recv()
        except (EOFError, OSError):
            self._process.join(timeout=5)
            raise EngineUnavailableError(
                f"the engine process ended while starting (exit code {self._process.exitcode})"
            ) from None
        if status == "failed":
            self._process.join(timeout=CLOSE_TIMEOUT_S)
            raise payload
        description, self.pid, self.address = payload
        super().__init__(conn, description)
        log.info("engine %s runs in process %d", self.name, self.pid)

    def close(self) -> None:
        self._calls.close(None)  # the calls queued, then the stop; an engine already gone fails them
        self._process.join(timeout=CLOSE_TIMEOUT_S)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=10)
        self._disconnect()
