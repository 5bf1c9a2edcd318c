"""Metrics with a replica label: every sample carries it, and the values are the replica's own."""

from __future__ import annotations

from prometheus_client import generate_latest

from whisper_endpoint.serving.metrics import Metrics


def test_replica_label_on_every_sample() -> None:
    metrics = Metrics(replica="r7")
    metrics.audio_seconds.inc(12.5)
    metrics.requests.labels("/v1/audio/transcriptions", "200").inc()
    metrics.processing.observe(0.3)
    text = generate_latest(metrics.registry).decode()
    assert 'whisper_audio_seconds_total{replica="r7"} 12.5' in text
    assert 'whisper_requests_total{replica="r7",route="/v1/audio/transcriptions",status="200"} 1.0' in text
    assert 'whisper_processing_seconds_bucket{le="0.5",replica="r7"} 1.0' in text
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert samples and all('replica="r7"' in line for line in samples)
    plain = generate_latest(Metrics().registry).decode()
    assert "replica=" not in plain and "whisper_audio_seconds_total 0.0" in plain
