"""Raft consensus: a pure core (``core``, ``log``, ``progress``, ``messages``, ``storage``,
``format``) that imports nothing from Trio and does no IO, plus the storage a broker runs
it on. ``sentinel.raft.core`` documents the Ready contract every application must keep."""

from sentinel.raft.core import Config, NotLeader, ProposalDropped, RaftNode, Ready, Status
from sentinel.raft.messages import NONE, Entry, HardState, Message, MsgType, Role, Snapshot
from sentinel.raft.storage import MemoryStorage, RaftStorage

__all__ = [
    "NONE",
    "Config",
    "Entry",
    "HardState",
    "MemoryStorage",
    "Message",
    "MsgType",
    "NotLeader",
    "ProposalDropped",
    "RaftNode",
    "RaftStorage",
    "Ready",
    "Role",
    "Snapshot",
    "Status",
]
