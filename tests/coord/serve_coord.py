"""A control plane (the coordination API among the rest), as its own process.

    python serve_coord.py PORT STORE DATA_DIR [ETCD_ENDPOINT]

The tests kill its clients (and sometimes stop it) to see what coordination
does when processes die.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from crossway.server import ServerSettings, serve
from crossway.server.logs import configure_logging


def main() -> None:
    port, store, data_dir = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    endpoints = tuple(sys.argv[4:5]) or ("http://127.0.0.1:2379",)
    settings = ServerSettings(
        port=port,
        store=store,
        data_dir=data_dir,
        etcd_endpoints=endpoints,
        log_level="warning",
        log_format="json",
        shutdown_grace=2,
    )
    settings.check()
    configure_logging(settings.log_level, settings.log_format)
    with asyncio.Runner() as runner:
        runner.run(serve(settings))


if __name__ == "__main__":
    main()
