"""LoopTool: closed-loop data and training for tool-calling LLMs, as services on NATS."""

__version__ = "0.1.0"
