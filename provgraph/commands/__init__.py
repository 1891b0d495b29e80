"""Sub-commands of the ``provgraph`` CLI, one module each (see :mod:`provgraph.cli`)."""

from __future__ import annotations

import argparse
from typing import Any

from ..remote import RemoteStore
from ..settings import Settings, load_settings
from ..store import Store, open_backend

__all__ = ["open_store", "settings_from_args"]


def settings_from_args(args: argparse.Namespace, **extra: Any) -> Settings:
    """Settings from ``--config``/``--data-dir``/``--store`` plus environment and file."""
    overrides: dict[str, Any] = dict(extra)
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = args.data_dir
    if getattr(args, "store", None):
        overrides["store_path"] = args.store
    return load_settings(getattr(args, "config", None), **overrides)


def open_store(args: argparse.Namespace, *, write: bool = False) -> Store | RemoteStore:
    """Open the configured store: the server at ``store_url`` if set; else the on-disk
    store, for writing when free (so spooled batches are ingested) and read-only when
    another process holds it (unless ``write`` is asked)."""
    from ..errors import NotFoundError, StoreLockedError

    settings = settings_from_args(args)
    if settings.store_url:
        return open_backend(settings)
    if not write and not (settings.store_dir / "CURRENT").exists():
        raise NotFoundError(
            f"no provgraph store at {settings.store_dir} (record a workflow first, "
            "or point --data-dir / --store / PROVGRAPH_DATA_DIR at one)"
        )
    try:
        return Store(settings.store_dir)
    except StoreLockedError:
        if write:
            raise
        return Store(settings.store_dir, read_only=True)
