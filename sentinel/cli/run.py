"""``sentinel run``: start one broker node in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

import errno
import logging
import signal
import socket
from pathlib import Path

import trio
import typer

from sentinel.broker.names import MAX_PARTITIONS
from sentinel.cli.errors import readable_errors, single_leaf
from sentinel.cli.output import usage_error
from sentinel.errors import SentinelError
from sentinel.node import DEFAULT_MAX_MESSAGE_BYTES, Node, NodeAddresses, NodeConfig
from sentinel.storage.options import SyncMode
from sentinel.storage.sstable_format import BLOCK_SIZE


async def serve(config: NodeConfig) -> None:
    node = Node(config)
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            addresses: NodeAddresses = await nursery.start(node.run)
            for line in node.store.recovery_report if node.store is not None else ():
                typer.echo(f"recovery: {line}", err=True)
            if node.repaired_damage:
                typer.echo(
                    f"recovery: storage damaged ({node.repaired_damage}); rejoining the cluster as a "
                    "recovering replica: no votes until the leaders have brought it up to date",
                    err=True,
                )
            metrics = (
                f", metrics on http://{config.metrics_host}:{addresses.metrics_port}/metrics"
                if addresses.metrics_port is not None
                else ""
            )
            typer.echo(
                f"sentinel node {config.node_id} listening on {config.host}:{addresses.grpc_port}"
                f"{metrics}, data in {config.data_dir} (sync {config.sync})",
                err=True,
            )
            async for signum in signals:
                typer.echo(f"received {signal.Signals(signum).name}, shutting down", err=True)
                node.stop()
                break
    typer.echo("sentinel stopped", err=True)


MAX_PORT = 65_535
# Smaller would refuse every produce request; larger overflows gRPC's 32-bit signed lengths.
MIN_MESSAGE_BYTES = 1024
MAX_MESSAGE_BYTES = 2**31 - 1
# A memtable smaller than one SSTable data block would flush a table per write or two,
# burying the engine in level-0 tables. (Small ones, a few blocks, serve tests well.)
MIN_MEMTABLE_BYTES = BLOCK_SIZE


def _range(low: int, high: int | None) -> str:
    return f">= {low}" if high is None else f"between {low} and {high}"


def _reason(exc: BaseException) -> str:
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc)


@readable_errors
def run(
    node_id: int = typer.Option(1, envvar="SENTINEL_NODE_ID", help="This node's id."),
    host: str = typer.Option("127.0.0.1", envvar="SENTINEL_HOST", help="Address the gRPC API binds."),
    port: int = typer.Option(9092, envvar="SENTINEL_PORT", help="gRPC port (0 picks a free one)."),
    data: Path = typer.Option(Path("sentinel-data"), envvar="SENTINEL_DATA", help="Data directory."),
    metrics_host: str = typer.Option(
        "127.0.0.1", envvar="SENTINEL_METRICS_HOST", help="Address GET /metrics binds."
    ),
    metrics_port: int = typer.Option(
        9100, envvar="SENTINEL_METRICS_PORT", help="Port of GET /metrics (0: any free port, -1: off)."
    ),
    sync: SyncMode = typer.Option(
        SyncMode.INTERVAL, envvar="SENTINEL_SYNC", help="WAL sync mode: when a write counts as durable."
    ),
    auto_create_topics: bool = typer.Option(
        True,
        "--auto-create-topics/--no-auto-create-topics",
        envvar="SENTINEL_AUTO_CREATE_TOPICS",
        help="Create a topic on its first produce or fetch.",
    ),
    default_partitions: int = typer.Option(
        1, envvar="SENTINEL_DEFAULT_PARTITIONS", help="Partitions of an auto-created topic."
    ),
    retention_ms: int = typer.Option(
        0, envvar="SENTINEL_RETENTION_MS", help="Default topic retention by age (0: forever)."
    ),
    retention_bytes: int = typer.Option(
        0, envvar="SENTINEL_RETENTION_BYTES", help="Default per-partition retention by size (0: no limit)."
    ),
    max_message_bytes: int = typer.Option(
        DEFAULT_MAX_MESSAGE_BYTES, envvar="SENTINEL_MAX_MESSAGE_BYTES", help="Largest request accepted."
    ),
    memtable_bytes: int = typer.Option(
        8 * 1024 * 1024, envvar="SENTINEL_MEMTABLE_BYTES", help="Memtable size that triggers a flush."
    ),
    group_min_session_timeout_ms: int = typer.Option(
        6_000,
        envvar="SENTINEL_GROUP_MIN_SESSION_TIMEOUT_MS",
        help="Shortest session timeout a group member may ask for (Kafka's default).",
    ),
    group_max_session_timeout_ms: int = typer.Option(
        1_800_000,
        envvar="SENTINEL_GROUP_MAX_SESSION_TIMEOUT_MS",
        help="Longest session timeout a group member may ask for (Kafka's default).",
    ),
    accept_data_loss: bool = typer.Option(
        False,
        "--accept-data-loss",
        envvar="SENTINEL_ACCEPT_DATA_LOSS",
        help="Start on a corrupt WAL or manifest: truncate at the damage and report what was dropped.",
    ),
    peers: str = typer.Option(
        "",
        envvar="SENTINEL_PEERS",
        help="Every node's peer address, as 1=host:port,2=host:port,... (empty: a cluster of one).",
    ),
    peer_host: str = typer.Option(
        "", envvar="SENTINEL_PEER_HOST", help="Address the peer listener binds (default: --host)."
    ),
    peer_port: int = typer.Option(
        0,
        envvar="SENTINEL_PEER_PORT",
        help="Port of the peer listener (default: this node's port in --peers).",
    ),
    advertise: str = typer.Option(
        "",
        envvar="SENTINEL_ADVERTISE",
        help="HOST:PORT clients and other brokers are told to use (default: --host and the API port).",
    ),
    default_replication_factor: int = typer.Option(
        1, envvar="SENTINEL_DEFAULT_REPLICATION_FACTOR", help="Replicas of an auto-created topic."
    ),
) -> None:
    """Run a broker node until SIGINT or SIGTERM (graceful, bounded shutdown, exit 0)."""
    for option, value, low, high in (
        ("--node-id", node_id, 1, None),  # Raft's node ids: 0 means "no node" (no leader, no vote)
        ("--port", port, 0, MAX_PORT),
        ("--metrics-port", metrics_port, -1, MAX_PORT),
        ("--default-partitions", default_partitions, 1, MAX_PARTITIONS),
        ("--retention-ms", retention_ms, 0, None),
        ("--retention-bytes", retention_bytes, 0, None),
        ("--max-message-bytes", max_message_bytes, MIN_MESSAGE_BYTES, MAX_MESSAGE_BYTES),
        ("--memtable-bytes", memtable_bytes, MIN_MEMTABLE_BYTES, None),
    ):
        if value < low or (high is not None and value > high):
            usage_error(f"{option} must be {_range(low, high)}, got {value}")
    if not 1 <= group_min_session_timeout_ms <= group_max_session_timeout_ms:
        usage_error(
            "--group-min-session-timeout-ms must be >= 1 and at most --group-max-session-timeout-ms, "
            f"got {group_min_session_timeout_ms} and {group_max_session_timeout_ms}"
        )
    if data.exists() and not data.is_dir():
        usage_error(f"--data {data} is not a directory")
    # Resolved here so a bad address is named: the bind's own error says only "Name or
    # service not known".
    listen = [("--host", host)] + ([("--metrics-host", metrics_host)] if metrics_port >= 0 else [])
    for option, address in listen:
        try:
            socket.getaddrinfo(address, None)
        except (OSError, UnicodeError) as exc:
            usage_error(f"{option} {address!r} is not an address to listen on: {_reason(exc)}")
    peer_map = parse_peers(peers)
    if peer_map and node_id not in peer_map:
        usage_error(f"--peers names nodes {sorted(peer_map)} but not this node (--node-id {node_id})")
    own_peer_port = peer_port or (peer_map[node_id][1] if peer_map else 9093)
    advertise_host, advertise_port = parse_address(advertise, "--advertise") if advertise else ("", 0)
    if default_replication_factor < 1:
        usage_error(f"--default-replication-factor must be at least 1, got {default_replication_factor}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    config = NodeConfig(
        node_id=node_id,
        host=host,
        port=port,
        data_dir=data,
        metrics_host=metrics_host,
        metrics_port=metrics_port,
        sync=sync,
        auto_create_topics=auto_create_topics,
        default_partitions=default_partitions,
        default_retention_ms=retention_ms,
        default_retention_bytes=retention_bytes,
        max_message_bytes=max_message_bytes,
        memtable_bytes=memtable_bytes,
        accept_data_loss=accept_data_loss,
        group_min_session_timeout_ms=group_min_session_timeout_ms,
        group_max_session_timeout_ms=group_max_session_timeout_ms,
        peers=peer_map,
        peer_host=peer_host or host,
        peer_port=own_peer_port,
        advertise_host=advertise_host,
        advertise_port=advertise_port,
        default_replication_factor=default_replication_factor,
    )
    try:
        trio.run(serve, config)
    except BaseException as exc:
        raise _named_bind_error(exc, host, port) from None


def _named_bind_error(exc: BaseException, host: str, port: int) -> BaseException:
    """The gRPC listener's bind failure, saying which address and option (asyncio's own
    message is "[Errno 98] error while attempting to bind on address ..."); anything else
    as it is."""
    leaf = single_leaf(exc)
    if isinstance(leaf, OSError) and not isinstance(leaf, SentinelError):
        if leaf.errno == errno.EADDRINUSE:
            return SentinelError(f"gRPC port {host}:{port} is in use (--port)")
        if leaf.errno == errno.EADDRNOTAVAIL:
            return SentinelError(f"cannot listen on {host}:{port}: not an address of this machine (--host)")
    return exc


def parse_address(text: str, option: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        usage_error(f"{option} must be HOST:PORT with a port in 1..65535, got {text!r}")
    return host, int(port)


def parse_peers(text: str) -> dict[int, tuple[str, int]]:
    """``1=host:port,2=host:port`` (etcd's initial-cluster shape) -> {1: (host, port), ...}."""
    peers: dict[int, tuple[str, int]] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        node, sep, address = item.partition("=")
        if not sep or not node.isdigit() or int(node) < 1:
            usage_error(f"--peers entries are NODE_ID=HOST:PORT with an id >= 1, got {item!r}")
        if int(node) in peers:
            usage_error(f"--peers names node {node} twice")
        peers[int(node)] = parse_address(address, f"--peers entry for node {node}")
    return peers
