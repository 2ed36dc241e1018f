"""Load balancers over a changing set of endpoints. Pure: no sockets, no loop."""
