"""Child process of test_raft_crash.py: one Raft node on the LSM store, driven by a seeded
adversary playing the other two voters, until the parent SIGKILLs it.

``run DIR SEED SYNC ACKED``: node 1 of voters (1, 2, 3) persists every Ready through
LsmRaftStorage and sends its messages only as the Ready contract allows. The adversary
elects leaders in ever higher terms (node 1 grants their votes) and has them append
entries; some appends replace an unacknowledged suffix. Every response node 1 sends that
the adversary receives is printed as a JSON line, flushed, BEFORE the adversary acts on it:

    {"vote": [term, candidate]}      a vote grant
    {"ack": [index, term]}           an append acknowledged up to index, whose entry has term

An acknowledgement may be "lost" (not received, not printed): the adversary may then
replace those entries, as a real leader of a later term may. ACKED is the highest index
an earlier incarnation's adversary received an acknowledgement for: never replaced.

``check DIR``: print the persisted hard state and the log's terms as one JSON line.
"""

from __future__ import annotations

import json
import random
import sys

import trio
import trio.lowlevel

from sentinel.raft.core import Config, RaftNode
from sentinel.raft.lsm_storage import LsmRaftStorage
from sentinel.raft.messages import Entry, Message, MsgType
from sentinel.storage.options import StorageOptions, SyncMode
from sentinel.storage.store import open_store


def emit(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def run(directory: str, seed: int, sync: str, acked: int) -> None:
    rng = random.Random(seed)
    async with open_store(directory, StorageOptions(sync=SyncMode(sync))) as store:
        storage = LsmRaftStorage(store, 1, cache_bytes=4096)
        config = Config(id=1, voters=(1, 2, 3), pre_vote=False, check_quorum=False)
        node = RaftNode(config, storage, random.Random(seed))
        # The adversary's view of the leaders' log: what node 1 holds after the restart.
        terms = [storage.term(i) for i in range(1, storage.last_index() + 1)]
        term = storage.initial_state().term
        # ``acked``: the highest index whose acknowledgement the adversary received.
        leader = 0
        emit({"started": [term, len(terms)]})
        while True:
            if leader == 0 or rng.random() < 0.1:
                # A new leader of a new term. It holds everything acknowledged and maybe a
                # different suffix after it (replacing what node 1 holds unacknowledged).
                term += 1
                leader = rng.choice((2, 3))
                del terms[acked + rng.randrange(len(terms) - acked + 1) :]
                inbox = [
                    Message(
                        MsgType.VOTE,
                        leader,
                        1,
                        term,
                        index=max(len(terms), node.log.last_index()),
                        log_term=term - 1,
                    )
                ]
            else:
                prev = acked
                terms.extend([term] * rng.randrange(1, 20))
                entries = [Entry(t, i + 1, b"%d/%d" % (t, i + 1)) for i, t in enumerate(terms) if i >= prev]
                inbox = [
                    Message(
                        MsgType.APP,
                        leader,
                        1,
                        term,
                        index=prev,
                        log_term=terms[prev - 1] if prev else 0,
                        entries=entries,
                    )
                ]
            for m in inbox:
                node.step(m)
            while node.has_ready():
                rd = node.ready()
                await storage.persist(rd)
                for out in rd.messages_after_persist:
                    if out.type is MsgType.VOTE_RESP and not out.reject:
                        emit({"vote": [out.term, out.to]})
                    elif out.type is MsgType.APP_RESP and not out.reject and rng.random() < 0.8:
                        emit({"ack": [out.index, node.log.term(out.index)]})
                        acked = max(acked, out.index)
                node.advance(rd)
            await trio.lowlevel.checkpoint()


async def check(directory: str) -> None:
    async with open_store(directory) as store:
        storage = LsmRaftStorage(store, 1)
        hs = storage.initial_state()
        terms = [storage.term(i) for i in range(1, storage.last_index() + 1)]
        emit({"hard_state": [hs.term, hs.vote, hs.commit], "terms": terms})


if __name__ == "__main__":
    if sys.argv[1] == "run":
        trio.run(run, sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]))
    else:
        trio.run(check, sys.argv[2])
