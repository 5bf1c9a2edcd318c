"""A vLLM scheduler that admits new windows in bursts, every Nth step, while others are decoding.

vLLM 0.26 runs a step of Whisper eagerly, without torch.compile or CUDA graphs, whenever that step
encodes new audio (its model runner skips the compiled decoder on steps with encoder inputs). Under a
steady stream of requests a few windows start on almost every step, so almost every decoding step of
hundreds of windows runs eagerly. Holding new windows back to every Nth step leaves the steps between
as pure decoding, which vLLM runs as CUDA graphs, and gives the encoder larger batches.

vLLM imports this module in its engine core process, by name (`scheduler_cls`); the step count comes from
the environment, which that process inherits from the engine. The rule itself (`holds_new_windows`) lives
in `engines.vllm`, which imports without vLLM.
"""

from __future__ import annotations

import os
from typing import Any

from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.interface import PauseState

from whisper_endpoint.engines.vllm import ADMIT_EVERY_ENV, holds_new_windows


# AsyncScheduler, as vLLM picks by default: a subclass of the plain Scheduler turns async scheduling off.
class BurstScheduler(AsyncScheduler):  # type: ignore[misc]  # vLLM is untyped here
    _pause_state: Any  # the Scheduler's; declared for the type checker, which does not see vLLM

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.admit_every = max(1, int(os.environ.get(ADMIT_EVERY_ENV, "1")))

    def schedule(self, *args: Any, **kwargs: Any) -> Any:
        # vLLM's own pause state for "run what is running, start nothing new", for this one step.
        hold = self._pause_state == PauseState.UNPAUSED and holds_new_windows(
            self.current_step + 1, self.admit_every, len(self.running)
        )
        if hold:
            self._pause_state = PauseState.PAUSED_NEW
        try:
            return super().schedule(*args, **kwargs)
        finally:
            if hold:
                self._pause_state = PauseState.UNPAUSED
