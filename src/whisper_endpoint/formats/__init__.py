"""Pure renderers from a Transcript to OpenAI's response formats."""
