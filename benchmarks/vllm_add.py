"""What handing a window to vLLM's engine core costs the thread that does it, while other threads of its
process prepare windows: vLLM 0.26's own path (serialise the request, features included, then send it) against
requests serialised beforehand by the preparing threads, so that the adding thread only sends.

    python -m benchmarks.vllm_add --out DIR        # vLLM and torch installed; no GPU needed

On the GPU hosts our driver thread spent 6 to 10 ms on each window it added (docs/benchmarks.md), whatever
Python's switch interval. Each torch call in serialising a window's features (vLLM's `tensor_data`) and each
frame sent lets go of the interpreter lock, and the thread must win it back from the threads preparing
windows. Here a child process receives and decodes the requests as vLLM's engine core would; the adding
thread adds BURST windows back to back, then waits STEP_S (a step), as the driver does. First it checks that
the frames serialised beforehand (`vllm_driver.EncodedAdds`) are those vLLM would send.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
import threading
import time
import uuid
from collections import deque
from datetime import date
from pathlib import Path
from typing import Any

SECONDS = 5.0  # per row
BURST = 8  # windows added back to back
STEP_S = 0.02  # then a step's wait


def receive(socket: str, ready: Any) -> None:
    """The engine core's side: every request decoded."""
    import zmq
    from vllm.utils.network_utils import make_zmq_socket
    from vllm.v1.engine import EngineCoreRequest
    from vllm.v1.serial_utils import MsgpackDecoder

    sock = make_zmq_socket(zmq.Context(), socket, zmq.PULL, bind=False)
    decoder = MsgpackDecoder(EngineCoreRequest)
    ready.set()
    while (frames := sock.recv_multipart(copy=False)) and frames[0].bytes != b"stop":
        decoder.decode(frames)


def window_request() -> Any:
    """One window's request as our engine makes it: large-v3's 128 x 3,000 bf16 log-mel, our prompt."""
    import torch
    from vllm.multimodal.inputs import (
        MultiModalBatchedField,
        MultiModalFeatureSpec,
        MultiModalFieldElem,
        MultiModalKwargsItem,
        PlaceholderRange,
    )
    from vllm.sampling_params import RequestOutputKind, SamplingParams
    from vllm.v1.engine import EngineCoreRequest

    from whisper_endpoint.engines.vllm_inputs import check_window, torch_log_mel

    features = torch_log_mel(128)(check_window()).to(torch.bfloat16)
    item = MultiModalKwargsItem({"input_features": MultiModalFieldElem(data=features, field=MultiModalBatchedField())})
    position = PlaceholderRange(offset=0, length=1500)
    spec = MultiModalFeatureSpec(data=item, modality="audio", identifier=uuid.uuid4().hex, mm_position=position)
    params = SamplingParams(max_tokens=100, logprobs=0, prompt_logprobs=1, output_kind=RequestOutputKind.FINAL_ONLY)
    request_id = uuid.uuid4().hex
    return EngineCoreRequest(
        request_id=request_id,
        prompt_token_ids=[50258, 50259, 50360, 50364],
        mm_features=[spec],
        sampling_params=params,
        pooling_params=None,
        arrival_time=time.time(),
        lora_request=None,
        cache_salt=None,
        data_parallel_rank=None,
        external_req_id=request_id,
    )


def row(preencoded: bool, preparers: int, socket: str) -> dict[str, Any]:
    import zmq
    from vllm.utils.network_utils import make_zmq_socket
    from vllm.v1.serial_utils import MsgpackEncoder

    sock = make_zmq_socket(zmq.Context(), socket, zmq.PUSH, bind=True)
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    child = context.Process(target=receive, args=(socket, ready))
    child.start()
    ready.wait(120)
    stop, prepared = threading.Event(), [0]

    def prepare() -> None:  # as the engine process's calls under load; what they make is dropped
        encoder = MsgpackEncoder()
        while not stop.is_set():
            request = window_request()
            if preencoded:
                encoder.encode(request)
            prepared[0] += 1

    requests = [window_request() for _ in range(16)]
    encoder = MsgpackEncoder()
    frames = [encoder.encode(r) for r in requests] if preencoded else None
    for _ in range(preparers):
        threading.Thread(target=prepare, daemon=True).start()
    pending: deque[Any] = deque()  # as vLLM's client keeps zero-copy frames until sent
    added, busy_s, started = 0, 0.0, time.monotonic()
    while time.monotonic() - started < SECONDS:
        t0 = time.monotonic()
        for _ in range(BURST):
            while pending and pending[-1].done:
                pending.pop()
            message = frames[added % len(frames)] if frames else encoder.encode(requests[added % len(requests)])
            tracker = sock.send_multipart(message, copy=False, track=True)
            if not tracker.done:
                pending.appendleft(tracker)
            added += 1
        busy_s += time.monotonic() - t0
        time.sleep(STEP_S)
    elapsed = time.monotonic() - started
    stop.set()
    sock.send(b"stop")
    child.join(30)
    sock.close(linger=0)
    return {
        "serialised_by": "the preparing threads" if preencoded else "the adding thread (vLLM 0.26's path)",
        "preparing_threads": preparers,
        "ms_per_add": round(1000 * busy_s / added, 3),
        "prepared_per_s": round(prepared[0] / elapsed, 1),
    }


def frames_match_vllms_own() -> bool:
    """Whether `EncodedAdds` (serialising in another thread, then sending) sends exactly the frames that vLLM's
    own `SyncMPClient._send_input` sends for the same request, and registers it with the output processor."""
    from types import SimpleNamespace

    import msgspec
    from vllm.v1.engine import EngineCoreRequestType
    from vllm.v1.engine.core_client import MPClient, SyncMPClient
    from vllm.v1.engine.input_processor import InputProcessor
    from vllm.v1.engine.output_processor import OutputProcessor
    from vllm.v1.serial_utils import MsgpackEncoder

    from whisper_endpoint.engines.vllm_driver import EncodedAdds

    sent: list[list[bytes]] = []

    def send_multipart(message: Any, **_: Any) -> Any:
        sent.append([bytes(frame) for frame in message])
        return SimpleNamespace(done=False)

    socket = SimpleNamespace(send_multipart=send_multipart)
    client = SimpleNamespace(encoder=MsgpackEncoder(), input_socket=socket, core_engine=b"\0\0", is_dp=False)
    client.resources, client.pending_messages = SimpleNamespace(engine_dead=False), deque()
    for name in ("ensure_alive", "free_pending_messages", "add_pending_message"):
        setattr(client, name, getattr(MPClient, name).__get__(client))
    processors = {"output_processor": OutputProcessor(None, log_stats=False), "input_processor": InputProcessor}
    adds = EncodedAdds.of(SimpleNamespace(engine_core=client, **processors))
    assert adds is not None
    request = msgspec.structs.replace(window_request(), external_req_id=None)
    theirs = msgspec.structs.replace(request)
    encoded: list[Any] = []
    thread = threading.Thread(target=lambda: encoded.append(adds.encode(request)))
    thread.start()
    thread.join()
    adds.add(request, encoded[0])
    theirs.request_id, theirs.external_req_id = request.request_id, request.external_req_id
    SyncMPClient._send_input(client, EngineCoreRequestType.ADD, theirs)
    return len(sent) == 2 and sent[0] == sent[1] and request.request_id in processors["output_processor"].request_states


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--preparers", type=int, nargs="+", default=[0, 4, 8])
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in the engine process
    identical = frames_match_vllms_own()
    print(f"frames serialised beforehand identical to vLLM's own: {identical}")
    with tempfile.TemporaryDirectory() as folder:  # the socket's file goes with it
        socket = f"ipc://{folder}/requests"
        rows = [row(preencoded, n, socket) for n in args.preparers for preencoded in (False, True)]
    print("serialised by | preparing threads | ms per add | prepared/s")
    for r in rows:
        print(" | ".join(str(v) for v in r.values()))
    setup = {"cores": len(os.sched_getaffinity(0)), "seconds_per_row": SECONDS, "burst": BURST, "step_s": STEP_S}
    out = Path(args.out) / f"vllm-add-{date.today()}.json"
    out.write_text(json.dumps({**setup, "frames_identical_to_vllms_own": identical, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
