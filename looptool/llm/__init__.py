"""Models over HTTP: the OpenAI-compatible client, adapter serving, the local vLLM launcher and
tiny models built offline."""
