"""Telemetry: trace context propagation (W3C Trace Context and B3), spans,
metrics and structured logs that carry trace ids."""
