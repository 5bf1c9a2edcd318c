"""Word timestamps from the engine's cross-attention alignment, as openai/whisper computes them."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from whisper_endpoint.decoding.tokenizer import Tokenizer
from whisper_endpoint.engines.base import Alignment
from whisper_endpoint.formats.transcript import Word

PREPEND_PUNCTUATION = "\"'“¿([{-"
APPEND_PUNCTUATION = "\"'.。,，!！?？:：”)]}、"
SENTENCE_END = ".。!！?？"
MAX_WORD_MS = 3000  # no spoken word lasts longer: a longer one spans a pause
MIN_WORD_MS = 20


@dataclass(frozen=True)
class SegmentSpan:
    """A segment's text tokens and its absolute time range."""

    text_tokens: tuple[int, ...]
    start_ms: int
    end_ms: int


def words_for_window(
    tokenizer: Tokenizer, language: str, alignment: Alignment, spans: Sequence[SegmentSpan], window_start_ms: int
) -> list[list[Word]]:
    """Words for each segment of one window; `alignment` covers all its text tokens in order, then EOT."""
    starts = alignment.token_start_ms
    probs = alignment.token_probs
    out: list[list[Word]] = []
    offset = 0
    for span in spans:
        texts, groups = tokenizer.split_words(list(span.text_tokens), language)
        words: list[Word] = []
        for text, group in zip(texts, groups, strict=True):
            first, last = offset, offset + len(group)
            offset = last
            start = window_start_ms + starts[min(first, len(starts) - 1)]
            end = window_start_ms + starts[min(last, len(starts) - 1)]
            probability = statistics.fmean(probs[first:last]) if probs[first:last] else 0.0
            words.append(Word(text, start, end, round(probability, 4)))
        out.append(_clamp(_merge_punctuation(words), span))
    return out


def _merge_punctuation(words: list[Word]) -> list[Word]:
    """Attach opening quotes/brackets to the next word and closing punctuation to the previous one."""
    merged: list[Word] = []
    carry: Word | None = None
    for word in words:
        if word.word.strip() and all(c in PREPEND_PUNCTUATION for c in word.word.strip()) and word.word.startswith(" "):
            carry = (
                word if carry is None else Word(carry.word + word.word, carry.start_ms, word.end_ms, carry.probability)
            )
            continue
        if carry is not None:
            word = Word(carry.word + word.word.lstrip(), carry.start_ms, word.end_ms, word.probability)
            carry = None
        if merged and word.word.strip() and all(c in APPEND_PUNCTUATION for c in word.word.strip()):
            prev = merged[-1]
            merged[-1] = Word(prev.word + word.word.strip(), prev.start_ms, prev.end_ms, prev.probability)
            continue
        merged.append(word)
    if carry is not None:
        merged.append(carry)
    return merged


def _clamp(words: list[Word], span: SegmentSpan) -> list[Word]:
    """Keep words inside their segment, in order, and no longer than a spoken word can be."""
    if not words:
        return words
    durations = [w.end_ms - w.start_ms for w in words if w.end_ms > w.start_ms]
    median = int(statistics.median(durations)) if durations else 0
    longest = min(MAX_WORD_MS, max(2 * median, 700)) if median else MAX_WORD_MS
    out: list[Word] = []
    cursor = span.start_ms
    for i, w in enumerate(words):
        start = min(max(w.start_ms, cursor, span.start_ms), span.end_ms)
        end = min(max(w.end_ms, start + MIN_WORD_MS), span.end_ms)
        if end - start > longest:
            # Long "words" absorb a pause: before the first word of a segment, after a sentence end.
            if i == 0 or (out and out[-1].word.rstrip()[-1:] in SENTENCE_END):
                start = end - longest
            else:
                end = start + longest
        out.append(Word(w.word, start, max(end, start), w.probability))
        cursor = out[-1].end_ms
    return out
