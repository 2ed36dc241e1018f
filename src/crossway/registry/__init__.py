"""Service registry and discovery on the store: instances are keys bound to
leases; the catalog follows them through one watch."""

from crossway.registry.catalog import Catalog
from crossway.registry.model import Check, Instance, Registration
from crossway.registry.registry import Discovery, Registry, ServiceSummary

__all__ = [
    "Catalog",
    "Check",
    "Discovery",
    "Instance",
    "Registration",
    "Registry",
    "ServiceSummary",
]
