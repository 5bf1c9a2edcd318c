"""whisper-endpoint: an OpenAI-compatible speech-to-text server for Whisper models."""

__version__ = "0.1.0"
