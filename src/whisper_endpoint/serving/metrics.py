"""Prometheus metrics, one registry per app (no import-time globals)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)


class _WithLabels(Collector):
    """Every sample of a registry with constant labels added (a replica's name behind a shared proxy)."""

    def __init__(self, registry: CollectorRegistry, labels: dict[str, str]) -> None:
        self.registry = registry
        self.labels = labels

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            labelled = Metric(family.name, family.documentation, family.type, family.unit)
            for sample in family.samples:
                labelled.add_sample(
                    sample.name, {**self.labels, **sample.labels}, sample.value, sample.timestamp, sample.exemplar
                )
            yield labelled


class Metrics:
    def __init__(self, replica: str | None = None) -> None:
        r = self.registry = CollectorRegistry()
        if replica:  # what /metrics exposes: the same metrics, each with replica="..."
            self.registry = CollectorRegistry()
            self.registry.register(_WithLabels(r, {"replica": replica}))
        self.requests = Counter(
            "whisper_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.errors = Counter("whisper_errors", "Errors by code", ["code"], registry=r)
        self.audio_seconds = Counter("whisper_audio_seconds", "Audio seconds transcribed", registry=r)
        self.inflight = Gauge("whisper_requests_inflight", "Transcriptions admitted and not finished", registry=r)
        self.queued_audio = Gauge("whisper_queued_audio_seconds", "Admitted audio not yet transcribed", registry=r)
        self.queued_windows = Gauge("whisper_queue_windows", "Windows waiting for the engine", registry=r)
        self.cancelled_windows = Counter(
            "whisper_cancelled_windows", "Windows dropped because their client went away", registry=r
        )
        self.cancelled_requests = Counter("whisper_cancelled_requests", "Requests whose client went away", registry=r)
        self.rejected = Counter(
            "whisper_rejected_requests", "Requests refused by admission control", ["reason"], registry=r
        )
        self.queue_wait = Histogram(
            "whisper_queue_wait_seconds", "Wait of a job for the engine", registry=r, buckets=LATENCY_BUCKETS
        )
        self.processing = Histogram(
            "whisper_processing_seconds", "Wall time of a transcription", registry=r, buckets=LATENCY_BUCKETS
        )
        self.batch_size = Histogram(
            "whisper_batch_size",
            "Windows per engine call of the server's scheduler (CTranslate2; front-end processes call vLLM directly)",
            registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
        )
        self.realtime_factor = Gauge("whisper_realtime_factor", "Audio seconds per wall second, recent", registry=r)
        self.packed_windows = Counter(
            "whisper_packed_windows", "Short windows decoded together with others in one 30 s window", registry=r
        )
        self.pack_redecoded_windows = Counter(
            "whisper_pack_redecoded_windows", "Packed windows decoded again alone: their text did not split", registry=r
        )
        self.live_sessions = Gauge("whisper_live_sessions", "Live transcription sessions open", registry=r)
        self.live_audio_seconds = Counter(
            "whisper_live_audio_seconds", "Audio seconds received by live sessions", registry=r
        )
        self.live_latency = Histogram(
            "whisper_live_turn_latency_seconds",
            "From a live turn's commit (its speech's end plus the silence that ends it) to its completed transcript",
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.diarization_seconds = Histogram(
            "whisper_diarization_seconds",
            "Wall time of a request's diarization (after its transcription)",
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.windows = Counter(
            "whisper_windows",
            "Windows transcribed, wherever decoded (re-decodes: whisper_temperature_fallbacks)",
            registry=r,
        )
        self.fallbacks = Counter(
            "whisper_temperature_fallbacks", "Windows decoded again at a higher temperature", registry=r
        )
