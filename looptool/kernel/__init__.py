"""The kernel: what every service runs on and nothing of the method — the bus (NATS JetStream),
the service runtime, the event base and codec, names, settings loading, logs and errors.

Rule: nothing here imports another LoopTool layer (a test walks the import graph)."""
