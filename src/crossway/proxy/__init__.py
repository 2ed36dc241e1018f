"""The data plane engine: an HTTP/1.1 proxy on uvloop + httptools in the role
of the gateway (and, later, the sidecar). Routes come from
`crossway.proxy.routes`; endpoints from the registry through `watch`."""

from crossway.proxy.gateway import Gateway
from crossway.proxy.run import GatewaySettings, run_gateway, serve_gateway
from crossway.proxy.server import ProxyServer, ServerLimits

__all__ = [
    "Gateway",
    "GatewaySettings",
    "ProxyServer",
    "ServerLimits",
    "run_gateway",
    "serve_gateway",
]
