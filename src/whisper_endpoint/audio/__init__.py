"""Audio front-end: decode any container to 16 kHz mono float32, log-mel features, VAD, chunking."""

SAMPLE_RATE = 16_000  # Hz, what every Whisper model expects
