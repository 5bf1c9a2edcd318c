"""Packing: short windows of one request decoded together as one 30 s window.

Whisper pads every window to 30 s, so a 5 s chunk costs the encoder as much as a 30 s one. Short
windows of the same request that share a decoder prompt are laid end to end with silence (GAP_SAMPLES) between them and
decoded once; each timed segment goes back to the window it lies in, its timestamps shifted. A
window that got no segment, or whose segment runs into a neighbour, is decoded again on its own, so
packing can cost time but never text.

Windows of different requests are never packed together: Whisper's decoder attends to the whole
window, so one client's speech changed another's words (15 % of responses differed with whisper-base,
and crafted babble moved a 12-word phrase across), and a transcript must depend on its own audio only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from whisper_endpoint.audio import SAMPLE_RATE
from whisper_endpoint.audio.features import log_mel_window
from whisper_endpoint.decoding.fallback import split_timestamps
from whisper_endpoint.decoding.tokenizer import MS_PER_TIMESTAMP, Tokenizer
from whisper_endpoint.decoding.transcribe import samples_to_ms
from whisper_endpoint.engines.base import Engine, Generation, SamplingOptions, WindowInput

GAP_SAMPLES = 2 * SAMPLE_RATE  # silence between packed windows: Whisper closes a segment there
MAX_PACKED_SAMPLES = 28 * SAMPLE_RATE  # clear of the window's end, where decodes get cut short
MAX_MEMBER_MS = 15_000  # longer windows gain little from sharing
MAX_SPILL_MS = 1500  # how far a segment may reach into a neighbouring member and still be one member's
STEP_SAMPLES = SAMPLE_RATE * MS_PER_TIMESTAMP // 1000  # offsets on the 20 ms timestamp grid


@dataclass(frozen=True)
class Pack:
    members: tuple[int, ...]  # indices into the batch
    offsets: tuple[int, ...]  # where each member starts in the packed audio, in samples
    lengths: tuple[int, ...]  # each member's samples

    @property
    def total(self) -> int:
        return self.offsets[-1] + self.lengths[-1]


def _packable(window: WindowInput, options: SamplingOptions, tokenizer: Tokenizer) -> bool:
    return (
        window.duration_ms <= MAX_MEMBER_MS
        and options.temperature == 0  # fallback retries decode alone
        and not options.token_logprobs
        and options.max_new_tokens > 1  # a one-token decode, for a window's no-speech probability, has no text to split
        and window.prompt[:1] == (tokenizer.sot,)  # no previous text to condition on
        and tokenizer.no_timestamps not in window.prompt
    )


def plan(
    windows: Sequence[WindowInput], options: SamplingOptions, tokenizer: Tokenizer, groups: Sequence[str]
) -> list[Pack]:
    """Packs of two or more windows of one group (request), first fit in batch order; windows left out
    decode alone."""
    # (group, prompt) -> [(index, offset, length)]
    open_packs: dict[tuple[str, tuple[int, ...]], list[tuple[int, int, int]]] = {}
    done: list[list[tuple[int, int, int]]] = []
    for index, (window, group) in enumerate(zip(windows, groups, strict=True)):
        if window.samples is None or not _packable(window, options, tokenizer):  # None: nothing to lay out
            continue
        length = len(window.samples)
        members = open_packs.get((group, window.prompt))
        if members:
            _, last_offset, last_length = members[-1]
            offset = -(-(last_offset + last_length + GAP_SAMPLES) // STEP_SAMPLES) * STEP_SAMPLES
            if offset + length <= MAX_PACKED_SAMPLES:
                members.append((index, offset, length))
                continue
            done.append(members)
        open_packs[(group, window.prompt)] = [(index, 0, length)]
    done += open_packs.values()
    return [Pack(*map(tuple, zip(*members, strict=True))) for members in done if len(members) > 1]


def packed_input(windows: Sequence[WindowInput], pack: Pack, n_mels: int | None) -> WindowInput:
    """The pack's audio as one window; its log-mel too unless `n_mels` is None (the engine makes its own)."""
    audio = np.zeros(pack.total, np.float32)
    for index, offset, length in zip(pack.members, pack.offsets, pack.lengths, strict=True):
        samples = windows[index].samples
        assert samples is not None
        audio[offset : offset + length] = samples
    prompt = windows[pack.members[0]].prompt
    features = log_mel_window(audio, n_mels) if n_mels is not None else None
    return WindowInput(features, prompt, samples_to_ms(pack.total), audio)


def unpack(generation: Generation, pack: Pack, tokenizer: Tokenizer) -> list[Generation] | None:
    """One generation per member, timestamps relative to it; None when the text does not split cleanly.

    Whisper's timestamps drift by up to a second around the jumps between members, so a segment goes to
    the member it overlaps most, and one that also covers more than MAX_SPILL_MS of another member
    counts as spanning both.
    """
    starts = [samples_to_ms(o) for o in pack.offsets]
    ends = [samples_to_ms(o + n) for o, n in zip(pack.offsets, pack.lengths, strict=True)]
    runs, _ = split_timestamps(generation.tokens, tokenizer, samples_to_ms(pack.total), keep_tail=True)
    tb = tokenizer.timestamp_begin
    tokens: list[list[int]] = [[] for _ in pack.members]
    for run in runs:
        if not (tokenizer.is_timestamp(run.tokens[0]) and tokenizer.is_timestamp(run.tokens[-1])):
            return None  # an unclosed segment: where it ends is unknown
        overlaps = [min(run.end_ms, e) - max(run.start_ms, s) for s, e in zip(starts, ends, strict=True)]
        owner = max(range(len(overlaps)), key=overlaps.__getitem__)
        if any(o > MAX_SPILL_MS for m, o in enumerate(overlaps) if m != owner):
            return None  # the segment holds speech of two members
        if run.end_ms <= run.start_ms and not starts[owner] <= run.start_ms <= ends[owner]:
            return None
        limit = (ends[owner] - starts[owner]) // MS_PER_TIMESTAMP

        def stamp(t_ms: int, owner: int = owner, limit: int = limit) -> int:
            return tb + min(limit, max(0, (t_ms - starts[owner]) // MS_PER_TIMESTAMP))

        tokens[owner] += [stamp(run.start_ms), *run.text_tokens, stamp(run.end_ms)]
    if any(not t for t in tokens):
        return None  # a member got no text: maybe silence, maybe skipped; its own decode will tell
    total = sum(len(t) for t in tokens)
    return [Generation(tuple(t), generation.sum_logprob * len(t) / total, generation.no_speech_prob) for t in tokens]


def generate_packed(
    engine: Engine, windows: Sequence[WindowInput], options: SamplingOptions, groups: Sequence[str]
) -> tuple[list[Generation], int, int]:
    """`engine.generate` with short windows of one group packed; also returns how many windows were packed
    and re-decoded."""
    packs = plan(windows, options, engine.tokenizer, groups)
    packed = {i for pack in packs for i in pack.members}
    alone = [i for i in range(len(windows)) if i not in packed]
    n_mels = engine.n_mels if engine.capabilities.log_mel_input else None
    inputs = [packed_input(windows, pack, n_mels) for pack in packs] + [windows[i] for i in alone]
    outputs = engine.generate(inputs, options) if inputs else []
    results: dict[int, Generation] = dict(zip(alone, outputs[len(packs) :], strict=True))
    again: list[int] = []
    for pack, output in zip(packs, outputs, strict=False):
        split = unpack(output, pack, engine.tokenizer)
        if split is None:
            again += pack.members
        else:
            results.update(zip(pack.members, split, strict=True))
    if again:
        results.update(zip(again, engine.generate([windows[i] for i in again], options), strict=True))
    return [results[i] for i in range(len(windows))], len(packed), len(again)
