"""Between HTTP requests and the engine: cross-request batching, admission control, cancellation."""
