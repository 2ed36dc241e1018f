"""The web dashboard: a single-page app served by the control plane at `/`.

The app's source lives in `dashboard/` at the top of the repository and is
built by `make dashboard` into `crossway/dashboard/static/` (part of the wheel,
so an installed control plane serves the UI without Node.js). `routes` is the
route provider listed last in `crossway.server.app.ROUTE_PROVIDERS`.
"""

from crossway.dashboard.routes import STATIC_DIR, routes

__all__ = ["STATIC_DIR", "routes"]
