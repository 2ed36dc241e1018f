"""Models, errors, durations and the injectable clock shared by every layer."""

from crossway.core.clock import Clock, SystemClock, VirtualClock
from crossway.core.durations import format_duration, parse_duration
from crossway.core.errors import CrosswayError

__all__ = [
    "Clock",
    "CrosswayError",
    "SystemClock",
    "VirtualClock",
    "format_duration",
    "parse_duration",
]
