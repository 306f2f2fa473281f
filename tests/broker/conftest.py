"""The broker's actor-level tests run on the shared node harness (``tests/node_harness.py``;
its fixtures ``clock``, ``node`` and ``make_node`` come from ``tests/conftest.py``). Its
names are re-exported here for the tests that import them from ``conftest``."""

from __future__ import annotations

from node_harness import NO_COMPACTION, NodeFactory, Running, frozen

__all__ = ["NO_COMPACTION", "NodeFactory", "Running", "frozen"]
