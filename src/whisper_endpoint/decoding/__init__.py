"""Engine-agnostic long-form decoding: windows, temperature fallback, timestamps, words."""
