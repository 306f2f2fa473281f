"""Model-based tests: the whole storage engine against a plain dict.

Two drivers, both on real files and the real actors, with a memtable of a few entries and
tiny level budgets so rotations, flushes, L0 compactions, multi-level compactions, trivial
moves and tombstone dropping happen all the time, interleaved with the reads (background
compaction runs in worker threads, at whatever moment it happens to run):

* a Hypothesis-generated *program* of puts, deletes, atomic batches, gets, range scans,
  flushes, manual compactions and clean reopens, run step by step against the dict (a
  failure shrinks to a short program). Derandomized: the same examples on every run;
* seeded rounds of concurrent writers (each owning its keys, so each has an exact model
  of its own) racing flushes and compactions, with a clean reopen between rounds.

After a session ends the directory must hold exactly the tables the manifest names, and
every level below L0 must be sorted and disjoint.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import attrs
import hypothesis.strategies as st
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from storage_checks import check_closed_directory

from sentinel.storage.compaction import CompactionOptions
from sentinel.storage.manifest import NUM_LEVELS
from sentinel.storage.options import StorageOptions, SyncMode
from sentinel.storage.store import Store, open_store

# A memtable holds only a handful of entries (each costs ~200 accounted bytes), and the
# level budgets are a few KiB, so a few hundred steps reach L3 and beyond.
OPTIONS = StorageOptions(
    sync=SyncMode.NONE,
    memtable_bytes=1024,
    compaction=CompactionOptions(
        l0_compaction_trigger=2,
        l0_stop_writes_trigger=6,
        l1_max_bytes=4 * 1024,
        level_size_multiplier=2,
        target_file_bytes=1024,
    ),
)
KEYS = 48  # few enough that keys are overwritten and deleted again and again

Model = dict[bytes, bytes]
Op = tuple[bytes, bytes | None]


def key_bytes(index: int) -> bytes:
    # Unpadded decimal, an empty key and prefix-related keys: bytes order is not numeric order.
    return b"" if index == 0 else b"k%d" % index


def value_bytes(step: int, size: int) -> bytes:
    return b"%d:" % step + bytes([97 + step % 26]) * size


def expected_scan(model: Model, start: bytes | None, end: bytes | None) -> list[tuple[bytes, bytes]]:
    return sorted(
        (k, v) for k, v in model.items() if (start is None or k >= start) and (end is None or k < end)
    )


def check_everything(store: Store, model: Model) -> None:
    assert list(store.scan()) == sorted(model.items())
    for index in range(KEYS):
        key = key_bytes(index)
        assert store.get(key) == model.get(key), key


# -- a generated program against the dict ------------------------------------------------

key_index = st.integers(0, KEYS - 1)
value_size = st.sampled_from([0, 1, 7, 40, 300])
# Percent of steps of each kind. Writes dominate so the tree grows; a reopen is rare enough
# that sessions are long. A draw shrinks towards 0, i.e. towards plain puts.
STEP_KINDS = (
    (45, "put"),
    (57, "delete"),
    (70, "batch"),
    (82, "get"),
    (93, "scan"),
    (96, "flush"),
    (98, "compact"),
)
step_args = {
    "put": st.tuples(key_index, value_size),
    "delete": st.tuples(key_index),
    "batch": st.tuples(st.lists(st.tuples(key_index, st.none() | value_size), min_size=1, max_size=12)),
    "get": st.tuples(key_index),
    "scan": st.tuples(st.none() | key_index, st.none() | key_index),
    "flush": st.just(()),
    "compact": st.just(()),
    "reopen": st.just(()),
}


def step_kind(roll: int) -> str:
    return next((kind for limit, kind in STEP_KINDS if roll < limit), "reopen")


program_steps = st.lists(
    st.integers(0, 99).flatmap(
        lambda roll: step_args[step_kind(roll)].map(lambda args: (step_kind(roll), *args))
    ),
    min_size=50,
    max_size=300,
)


async def run_program(directory: Path, program: list[tuple]) -> dict[str, int]:
    model: Model = {}
    done = {"flushes": 0, "compactions": 0, "reopens": 0}
    position = 0
    while position < len(program):
        async with open_store(directory, OPTIONS) as store:
            check_everything(store, model)
            while position < len(program):
                step = program[position]
                position += 1
                kind = step[0]
                if kind == "put":
                    key, value = key_bytes(step[1]), value_bytes(position, step[2])
                    await store.put(key, value)
                    model[key] = value
                    assert store.get(key) == value
                elif kind == "delete":
                    key = key_bytes(step[1])
                    await store.delete(key)
                    model.pop(key, None)
                    assert store.get(key) is None
                elif kind == "batch":
                    ops: list[Op] = [
                        (key_bytes(k), None if size is None else value_bytes(position * 100 + i, size))
                        for i, (k, size) in enumerate(step[1])
                    ]
                    await store.write(ops)
                    for key, maybe in ops:  # later ops of a batch win, as in the engine
                        if maybe is None:
                            model.pop(key, None)
                        else:
                            model[key] = maybe
                elif kind == "get":
                    key = key_bytes(step[1])
                    assert store.get(key) == model.get(key), key
                elif kind == "scan":
                    start = None if step[1] is None else key_bytes(step[1])
                    end = None if step[2] is None else key_bytes(step[2])
                    assert list(store.scan(start, end)) == expected_scan(model, start, end), (start, end)
                elif kind == "flush":
                    await store.flush()
                    done["flushes"] += 1
                    assert store.statistics().immutable_memtables == 0
                elif kind == "compact":
                    await store.compact()
                    done["compactions"] += 1
                else:
                    done["reopens"] += 1
                    break
            check_everything(store, model)
        check_closed_directory(directory)
    return done


@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(program=program_steps)
def test_generated_programs_match_a_dict(program: list[tuple]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        trio.run(run_program, Path(directory), program)


def test_generated_programs_reach_deep_levels() -> None:
    """The budgets above really do build a multi-level tree in a program of this size."""
    rng = random.Random(7)
    program: list[tuple] = [
        ("delete", rng.randrange(KEYS))
        if i % 50 == 49
        else ("put", rng.randrange(KEYS), rng.choice([7, 40, 300]))
        for i in range(400)
    ]

    async def run(directory: Path) -> tuple[int, ...]:
        await run_program(directory, program)
        async with open_store(directory, OPTIONS) as store:
            return store.statistics().tables_per_level

    with tempfile.TemporaryDirectory() as directory:
        levels = trio.run(run, Path(directory))
    assert any(levels[level] for level in range(2, NUM_LEVELS)), levels


# -- concurrent writers, seeded --------------------------------------------------------

WRITERS = 4
ROUNDS = 4
STEPS_PER_WRITER = 120


async def writer(store: Store, rng: random.Random, name: bytes, model: Model, round_: int) -> None:
    """Random puts, deletes and batches on this writer's own keys; reads its own writes."""
    keys = [name + b"-%02d" % i for i in range(24)]
    for step in range(STEPS_PER_WRITER):
        roll = rng.random()
        if roll < 0.5:
            key = rng.choice(keys)
            value = value_bytes(round_ * 10_000 + step, rng.choice([1, 30, 200]))
            await store.put(key, value)
            model[key] = value
        elif roll < 0.65:
            key = rng.choice(keys)
            await store.delete(key)
            model.pop(key, None)
        elif roll < 0.85:
            ops: list[Op] = [
                (rng.choice(keys), None if rng.random() < 0.3 else value_bytes(step * 100 + i, 20))
                for i in range(rng.randrange(1, 8))
            ]
            await store.write(ops)
            for key, maybe in ops:
                if maybe is None:
                    model.pop(key, None)
                else:
                    model[key] = maybe
        else:
            start, end = sorted(rng.sample(keys, 2))
            assert list(store.scan(start, end)) == expected_scan(model, start, end)
        key = rng.choice(keys)
        assert store.get(key) == model.get(key), key


async def maintenance(store: Store, rng: random.Random, stop: trio.Event) -> None:
    """Manual flushes and compactions racing the writers and the background compactor."""
    while not stop.is_set():
        if rng.random() < 0.7:
            await store.flush()
        else:
            await store.compact()
        await trio.sleep(rng.random() * 0.01)


async def run_concurrent(directory: Path, seed: int, sync: SyncMode) -> tuple[int, int]:
    rng = random.Random(seed)
    models: list[Model] = [{} for _ in range(WRITERS)]
    flushes = compactions = 0
    for round_ in range(ROUNDS):
        async with open_store(directory, attrs.evolve(OPTIONS, sync=sync)) as store:
            whole = {k: v for model in models for k, v in model.items()}
            assert list(store.scan()) == sorted(whole.items())  # everything survived the reopen
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(maintenance, store, random.Random(rng.random()), stop)
                async with trio.open_nursery() as writers:
                    for i in range(WRITERS):
                        writers.start_soon(
                            writer, store, random.Random(rng.random()), b"w%d" % i, models[i], round_
                        )
                stop.set()
            whole = {k: v for model in models for k, v in model.items()}
            assert list(store.scan()) == sorted(whole.items())
            stats = store.statistics().compaction
            flushes += stats.flushes
            compactions += stats.compactions
        check_closed_directory(directory)
    async with open_store(directory, OPTIONS) as store:
        whole = {k: v for model in models for k, v in model.items()}
        assert list(store.scan()) == sorted(whole.items())
    return flushes, compactions


@pytest.mark.parametrize(
    ("seed", "sync"), [(11, SyncMode.ALWAYS), (12, SyncMode.INTERVAL), (13, SyncMode.NONE)]
)
def test_concurrent_writers_match_their_models(tmp_path: Path, seed: int, sync: SyncMode) -> None:
    flushes, compactions = trio.run(run_concurrent, tmp_path, seed, sync)
    assert flushes >= 50 and compactions >= 20, (flushes, compactions)
