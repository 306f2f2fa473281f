"""Model-based test of the whole storage engine against a plain dict.

Seeded random sequences of put / delete / atomic batch / get / range scan / flush /
compact / clean reopen run against the real Store (real files, the real actors) with a tiny
memtable and small compaction budgets, so rotations, flushes, multi-level compactions,
trivial moves and tombstone dropping all happen many times per run. After every step the
reads must agree with the model exactly.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio

from sentinel.storage.compaction import CompactionOptions
from sentinel.storage.options import StorageOptions, SyncMode
from sentinel.storage.store import Store, open_store

STEPS = 1500
KEY_SPACE = 400  # small enough that keys are overwritten and deleted often

OPTIONS = StorageOptions(
    sync=SyncMode.NONE,
    memtable_bytes=4 * 1024,
    compaction=CompactionOptions(
        l0_compaction_trigger=2, l0_stop_writes_trigger=8, l1_max_bytes=16 * 1024, target_file_bytes=4 * 1024
    ),
)


def _key(rng: random.Random) -> bytes:
    return b"key-%05d" % rng.randrange(KEY_SPACE)


def _value(rng: random.Random, step: int) -> bytes:
    return b"v%d-" % step + rng.randbytes(rng.choice((0, 1, 8, 40, 200)))


def _check_scan(store: Store, model: dict[bytes, bytes], rng: random.Random) -> None:
    start = _key(rng) if rng.random() < 0.7 else None
    end = _key(rng) if rng.random() < 0.7 else None
    expected = sorted(
        (k, v) for k, v in model.items() if (start is None or k >= start) and (end is None or k < end)
    )
    assert list(store.scan(start, end)) == expected, (start, end)


async def _run(directory: Path, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    model: dict[bytes, bytes] = {}
    counts = {"reopen": 0, "flush": 0, "compact": 0}
    step = 0
    while step < STEPS:
        async with open_store(directory, OPTIONS) as store:
            assert dict(store.scan()) == model  # everything survived the reopen
            while step < STEPS:
                step += 1
                roll = rng.random()
                if roll < 0.40:
                    key, value = _key(rng), _value(rng, step)
                    await store.put(key, value)
                    model[key] = value
                elif roll < 0.55:
                    key = _key(rng)
                    await store.delete(key)
                    model.pop(key, None)
                elif roll < 0.70:
                    ops: dict[bytes, bytes | None] = {}
                    for _ in range(rng.randrange(1, 20)):
                        ops[_key(rng)] = None if rng.random() < 0.3 else _value(rng, step)
                    await store.write(list(ops.items()))
                    for key, maybe in ops.items():
                        if maybe is None:
                            model.pop(key, None)
                        else:
                            model[key] = maybe
                elif roll < 0.85:
                    key = _key(rng)
                    assert store.get(key) == model.get(key), key
                elif roll < 0.95:
                    _check_scan(store, model, rng)
                elif roll < 0.97:
                    await store.flush()
                    counts["flush"] += 1
                elif roll < 0.98:
                    await store.compact()
                    counts["compact"] += 1
                else:
                    counts["reopen"] += 1
                    break
            stats = store.statistics()
            counts["compactions"] = counts.get("compactions", 0) + stats.compaction.compactions
            counts["flushes"] = counts.get("flushes", 0) + stats.compaction.flushes
    async with open_store(directory, OPTIONS) as store:
        assert dict(store.scan()) == model
        for key in model:
            assert store.get(key) == model[key]
    return counts


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_engine_matches_a_dict_model(tmp_path: Path, seed: int) -> None:
    counts = trio.run(_run, tmp_path, seed)
    # The run must really have exercised the tree, or it proves little.
    assert counts["reopen"] >= 10
    assert counts["flushes"] >= 20
    assert counts["compactions"] >= 5
