"""Load balancers over a changing set of endpoints, and outlier ejection.

Pure decision objects: no sockets, no event loop, no sleeping. Every balancer
has the same shape (`update`, `set_ejected`, `pick`, `begin`), so they stack
and a proxy drives any of them with the same code; see `endpoint.py` for the
contract and docs/balancing.md for when to use which.
"""

from crossway.balance.endpoint import NO_CALL, Balancer, Call, Endpoint
from crossway.balance.least_request import LeastRequest, PeakEwma
from crossway.balance.maglev import Maglev
from crossway.balance.outlier import Outcome, OutlierConfig, OutlierDetector
from crossway.balance.ring_hash import RingHash
from crossway.balance.round_robin import RoundRobin, SmoothWeighted
from crossway.balance.zone_aware import ZoneAware

__all__ = [
    "NO_CALL",
    "Balancer",
    "Call",
    "Endpoint",
    "LeastRequest",
    "Maglev",
    "Outcome",
    "OutlierConfig",
    "OutlierDetector",
    "PeakEwma",
    "RingHash",
    "RoundRobin",
    "SmoothWeighted",
    "ZoneAware",
]
