"""provgraph over HTTP: the SPARQL 1.1 endpoint and lineage API (``pip install 'provgraph[server]'``).

:func:`build_app` gives a Starlette application; :func:`serve` runs it with uvicorn;
:func:`start` runs it on a background thread (notebooks, tests). Starlette and uvicorn
are imported only when these are called.
"""

from __future__ import annotations

from .app import RunningServer, build_app, serve, start

__all__ = ["RunningServer", "build_app", "serve", "start"]
