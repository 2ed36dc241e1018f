"""Distributed tracing in the control plane: Zipkin v2 and OTLP ingest, a bounded
store with tail sampling, the Zipkin query API's logic, and forwarding.

- `model`: the span (Zipkin v2's shape) and id normalisation;
- `zipkin`, `otlp`: codecs (all-or-nothing decoding);
- `store`: `TraceStore`, bounded, tail-sampled, clock-injected;
- `query`: Zipkin query parameters and trace matching;
- `forward`: a batched, bounded forwarder to Zipkin or an OTLP collector.
"""

from crossway.telemetry.traces.model import Annotation, Endpoint, Span
from crossway.telemetry.traces.store import TracePolicy, TraceStats, TraceStore, Verdict
from crossway.telemetry.traces.zipkin import SpanFormatError, decode_spans, encode_spans

__all__ = [
    "Annotation",
    "Endpoint",
    "Span",
    "SpanFormatError",
    "TracePolicy",
    "TraceStats",
    "TraceStore",
    "Verdict",
    "decode_spans",
    "encode_spans",
]
