"""Speaker diarization on the CPU: a voice encoder, clustering of its embeddings, words given to speakers."""
