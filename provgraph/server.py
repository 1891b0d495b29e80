"""The SPARQL HTTP endpoint (see :mod:`provgraph.http`): ``build_app``, ``serve``, ``start``.

::

    from provgraph.server import build_app, serve
    from provgraph.store import open_backend

    settings = provgraph.load_settings()
    serve(build_app(open_backend(settings, read_only=True), settings), settings.http_host, settings.http_port)
"""

from __future__ import annotations

from .http import RunningServer, build_app, serve, start

__all__ = ["RunningServer", "build_app", "serve", "start"]
