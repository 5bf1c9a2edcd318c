"""The driver's serialising in the callers' threads (EncodedAdds), against stand-ins for vLLM's client.

That the frames are byte for byte those vLLM 0.26's own `_send_input` sends was checked with vLLM installed
(benchmarks/vllm_add.py's setting); here, who does what, in which thread and order.
"""

from __future__ import annotations

import enum
import threading
from collections import deque
from types import SimpleNamespace
from typing import Any

import pytest

from tests.engines.stand_ins import install_modules
from tests.engines.test_vllm import FakeLLMEngine
from whisper_endpoint.engines.vllm_driver import EncodedAdds, EngineDriver


class RequestType(enum.Enum):
    ADD = b"\x00"


class Encoder:
    """vLLM's MsgpackEncoder's surface: frames for a request (a payload, then one tensor buffer)."""

    def __init__(self, oob_tensor_consumer: Any = None) -> None:
        self.oob_tensor_consumer = oob_tensor_consumer

    def encode(self, request: Any) -> list[bytes]:
        request.encoded_in = threading.current_thread().name
        return [f"payload {request.request_id}".encode(), b"features"]


class Socket:
    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []

    def send_multipart(self, message: tuple[Any, ...], copy: bool = True, track: bool = False) -> Any:
        self.sent.append(message)
        return SimpleNamespace(done=False, track=track)


class Client:
    """SyncMPClient's surface for adding a request."""

    def __init__(self, oob: Any = None, is_dp: bool = False) -> None:
        self.encoder, self.is_dp = Encoder(oob), is_dp
        self.input_socket, self.core_engine = Socket(), b"\x00\x00"
        self.pending: deque[Any] = deque()
        self.events: list[str] = []

    def ensure_alive(self) -> None:
        self.events.append("alive")

    def free_pending_messages(self) -> None:
        self.events.append("free")

    def add_pending_message(self, tracker: Any, request: Any) -> None:
        self.pending.append((tracker, request))


class ClientEngine(FakeLLMEngine):
    """An LLMEngine whose client and processors are stand-ins: windows added either way finish."""

    def __init__(self, client: Client) -> None:
        super().__init__(steps_per_request=2)
        self.engine_core = client
        self.input_processor.assign_request_id = self.assign_request_id  # type: ignore[attr-defined]
        self.output_processor = SimpleNamespace(add_request=self.track)
        self.own_path = 0

    @staticmethod
    def assign_request_id(request: Any) -> None:  # as vLLM: the caller's id kept, an internal one given
        request.external_req_id, request.request_id = request.request_id, f"{request.request_id}-internal"

    def track(self, request: Any, prompt: Any, parent: Any, index: int) -> None:
        self.engine_core.events.append(f"track {request.request_id}")
        self.left[request.external_req_id] = self.steps

    def add_request(self, request_id: str, request: SimpleNamespace, params: object) -> str:
        self.own_path += 1
        return super().add_request(request_id, request, params)


@pytest.fixture
def vllm_stand_ins(monkeypatch: pytest.MonkeyPatch) -> None:
    install_modules(
        monkeypatch,
        {"vllm.v1.engine": {"EngineCoreRequestType": RequestType}, "vllm.v1.serial_utils": {"MsgpackEncoder": Encoder}},
    )


@pytest.mark.usefixtures("vllm_stand_ins")
def test_callers_serialise_their_windows_and_the_driver_only_sends_them() -> None:
    client = Client()
    engine = ClientEngine(client)
    driver = EngineDriver(engine, stats_interval_s=3600, encode_in_callers=True)
    outputs: list[Any] = []
    callers = [
        threading.Thread(target=lambda: outputs.extend(driver.submit([{}] * 3, [SimpleNamespace(n=1)] * 3, dict)))
        for _ in range(2)
    ]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(timeout=10)
    driver.close()
    assert len(outputs) == 6 and engine.own_path == 0  # every window went the serialised way, and finished
    sent = client.input_socket.sent
    assert len(sent) == 6 and all(m[0] == b"\x00\x00" and m[1] == b"\x00" and m[3] == b"features" for m in sent)
    ids = [m[2].decode().removeprefix("payload ") for m in sent]
    assert all(i.endswith("-internal") for i in ids)  # vLLM's internal id given before serialising
    assert len(client.pending) == 6  # tensor buffers kept until zmq has sent them
    # the output processor knew each request before its frames went to the engine core
    for request_id in ids:
        tracked = client.events.index(f"track {request_id}")
        assert client.events[tracked + 1 : tracked + 3] == ["alive", "free"]  # then the send
    encoded_in = {request.encoded_in for _, request in client.pending}
    assert "vllm-engine" not in encoded_in and len(encoded_in) == 2  # in the two callers' threads


@pytest.mark.usefixtures("vllm_stand_ins")
@pytest.mark.parametrize(
    "client",
    [Client(oob="shared memory"), Client(is_dp=True), SimpleNamespace(encoder=Encoder())],
    ids=["tensors through shared memory", "data parallel", "another client"],
)
def test_clients_of_another_shape_keep_vllms_own_path(client: Any, caplog: pytest.LogCaptureFixture) -> None:
    engine = ClientEngine(Client())
    engine.engine_core = client
    assert EncodedAdds.of(engine) is None
    assert "serialises each window itself" in caplog.text
    driver = EngineDriver(engine, stats_interval_s=3600, encode_in_callers=True)
    assert len(driver.submit([{}], [SimpleNamespace(n=1)], dict)) == 1 and engine.own_path == 1
    driver.close()
