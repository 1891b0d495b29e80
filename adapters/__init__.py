"""Adapters that observe tools and emit PROV, importable as ``provgraph.adapters.<tool>``.

Each adapter imports its tool lazily and raises
:class:`~provgraph.errors.MissingDependencyError` naming the pip extra when it is absent.
"""
