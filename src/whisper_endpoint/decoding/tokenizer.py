"""Whisper's special tokens on top of a Hugging Face `tokenizers` vocabulary."""

from __future__ import annotations

import string
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

from whisper_endpoint.decoding.languages import LANGUAGES

SECONDS_PER_TIMESTAMP = 0.02
MS_PER_TIMESTAMP = 20


@dataclass(frozen=True)
class Tokenizer:
    """Token ids of Whisper's control tokens and text encode/decode, for one model."""

    hf: HFTokenizer
    multilingual: bool

    def __post_init__(self) -> None:
        # Text is only ever text: a prompt that spells "<|startoftranscript|>" must not become the control
        # token (control tokens are looked up by name, never encoded from text).
        self.hf.encode_special_tokens = True

    @classmethod
    def from_file(cls, path: Path, multilingual: bool) -> Tokenizer:
        return cls(HFTokenizer.from_file(str(path)), multilingual)

    def _id(self, token: str) -> int:
        token_id = self.hf.token_to_id(token)
        if token_id is None:
            raise KeyError(f"token {token!r} is not in the vocabulary")
        return int(token_id)

    @cached_property
    def eot(self) -> int:
        return self._id("<|endoftext|>")

    @cached_property
    def sot(self) -> int:
        return self._id("<|startoftranscript|>")

    @cached_property
    def sot_prev(self) -> int:
        return self._id("<|startofprev|>")

    @cached_property
    def no_speech(self) -> int:
        for name in ("<|nospeech|>", "<|nocaptions|>"):
            token_id = self.hf.token_to_id(name)
            if token_id is not None:
                return int(token_id)
        raise KeyError("no-speech token missing from the vocabulary")

    @cached_property
    def no_timestamps(self) -> int:
        return self._id("<|notimestamps|>")

    @cached_property
    def timestamp_begin(self) -> int:
        # The timestamp tokens follow <|notimestamps|> directly in every Whisper vocabulary.
        return self.no_timestamps + 1

    @cached_property
    def transcribe(self) -> int:
        return self._id("<|transcribe|>")

    @cached_property
    def translate(self) -> int:
        return self._id("<|translate|>")

    @cached_property
    def language_tokens(self) -> dict[str, int]:
        if not self.multilingual:
            return {}
        found = {code: self.hf.token_to_id(f"<|{code}|>") for code in LANGUAGES}
        return {code: int(tid) for code, tid in found.items() if tid is not None}

    def sot_sequence(self, language: str | None, task: str, timestamps: bool) -> list[int]:
        """<|startoftranscript|> [<|lang|> <|task|>] [<|notimestamps|>]."""
        tokens = [self.sot]
        if self.multilingual:
            tokens.append(self.language_tokens[language or "en"])
            tokens.append(self.translate if task == "translate" else self.transcribe)
        if not timestamps:
            tokens.append(self.no_timestamps)
        return tokens

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=False).ids)

    def decode(self, tokens: list[int]) -> str:
        return str(self.hf.decode([t for t in tokens if t < self.eot]))

    def is_timestamp(self, token: int) -> bool:
        return token >= self.timestamp_begin

    @cached_property
    def non_speech_tokens(self) -> list[int]:
        """Symbols Whisper suppresses so that it does not transcribe noises as ♪ or [MUSIC]."""
        symbols = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』')
        symbols += [
            "<<",
            ">>",
            "<<<",
            ">>>",
            "--",
            "---",
            "-(",
            "-[",
            "('",
            '("',
            "((",
            "))",
            "(((",
            ")))",
            "[[",
            "]]",
            "{{",
            "}}",
            "♪♪",
            "♪♪♪",
        ]
        miscellaneous = set("♩♪♫♬♭♮♯")
        result = {self.encode(" -")[0], self.encode(" '")[0]}
        for symbol in symbols + sorted(miscellaneous):
            for tokens in (self.encode(symbol), self.encode(" " + symbol)):
                if len(tokens) == 1 or symbol in miscellaneous:
                    result.add(tokens[0])
        return sorted(result)

    def split_words(self, tokens: list[int], language: str) -> tuple[list[str], list[list[int]]]:
        """Group text tokens into words: at spaces, or at unicode boundaries for CJK-like scripts."""
        if language in {"zh", "ja", "th", "lo", "my", "yue"}:
            return self._split_unicode(tokens)
        subwords, subword_tokens = self._split_unicode(tokens)
        words: list[str] = []
        word_tokens: list[list[int]] = []
        for subword, sub_tokens in zip(subwords, subword_tokens, strict=True):
            starts_word = subword.startswith(" ") or subword.strip() in string.punctuation
            if starts_word or not words:
                words.append(subword)
                word_tokens.append(list(sub_tokens))
            else:
                words[-1] += subword
                word_tokens[-1].extend(sub_tokens)
        return words, word_tokens

    def _split_unicode(self, tokens: list[int]) -> tuple[list[str], list[list[int]]]:
        # A multi-byte character may span tokens: only cut where the decoded text is whole.
        words: list[str] = []
        word_tokens: list[list[int]] = []
        current: list[int] = []
        for token in tokens:
            current.append(token)
            decoded = self.decode(current)
            if "\ufffd" not in decoded:
                words.append(decoded)
                word_tokens.append(current)
                current = []
        if current:
            words.append(self.decode(current))
            word_tokens.append(current)
        return words, word_tokens
