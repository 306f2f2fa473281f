"""The deployment files under deploy/, checked against each other and against Sentinel.

None of them can run on the development machines (no Docker engine, no Kubernetes), so
these tests stand in for `docker compose up` and `kubectl apply`: every YAML and JSON file
parses; the compose brokers and the StatefulSet name each other consistently (node ids,
peer lists, advertised addresses, ports, volumes); Prometheus scrapes exactly the brokers
and Grafana loads the dashboard from where it is mounted; every metric the dashboard
queries exists, with the labels it groups by; and every SENTINEL_* variable the files set
is one `sentinel run` accepts.

Two things are announced by the cluster work (issue 10) before they exist in the code:
the cluster options' variables and the Raft/peer metrics. Each is kept in one list below.
An announced variable is accepted until `sentinel run --help` shows any of them, and from
then on must be shown too; an announced metric, once the code defines it, must have the
announced kind and labels. So the checks tighten by themselves as the cluster lands.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import re
import shlex
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from sentinel.cli.main import app
from sentinel.storage.options import SyncMode

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "sentinel.json"
KUBERNETES = DEPLOY / "kubernetes" / "sentinel.yaml"
SYSTEMD = DEPLOY / "sentinel.service"

# The variables of the cluster options (issue 10), set by the files before `sentinel run`
# has them. Once --help shows any of them, it must show them all.
PENDING_CLUSTER_ENV = frozenset(
    {"SENTINEL_ADVERTISE", "SENTINEL_PEER_HOST", "SENTINEL_PEER_PORT", "SENTINEL_PEERS"}
)

# The Raft and peer-link metrics announced for the cluster (issue 10, "Operations"): name
# as exposed, kind, labels. `group` is "controller" or "topic/partition".
ANNOUNCED_METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "sentinel_raft_term": ("gauge", ("group",)),
    "sentinel_raft_role": ("gauge", ("group",)),  # 0 follower, 1 pre-candidate, 2 candidate, 3 leader
    "sentinel_raft_commit_index": ("gauge", ("group",)),
    "sentinel_raft_elections_total": ("counter", ("group",)),
    "sentinel_raft_leader_changes_total": ("counter", ("group",)),
    "sentinel_raft_append_latency_seconds": ("histogram", ()),
    "sentinel_raft_commit_latency_seconds": ("histogram", ()),
    "sentinel_raft_follower_lag": ("gauge", ("group", "follower")),
    "sentinel_peer_bytes_sent_total": ("counter", ("peer",)),
    "sentinel_peer_bytes_received_total": ("counter", ("peer",)),
    "sentinel_peer_reconnects_total": ("counter", ("peer",)),
    "sentinel_cluster_controller_leader": ("gauge", ()),
}

# Labels Prometheus adds to every scraped series.
TARGET_LABELS = frozenset({"instance", "job"})
# What the shutdown of a broker may take: SIGTERM, leadership hand-off, stop.
GRACE_SECONDS = 60


# --- reading the files (parsed once; the tests only read what these return) ---------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@functools.cache
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


@functools.cache
def kube_objects() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(KUBERNETES.read_text()) if doc is not None]


def kube_object(kind: str, name: str) -> dict[str, Any]:
    found = [o for o in kube_objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name} in {KUBERNETES.name}, found {len(found)}"
    return found[0]


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def dockerfile_stages(text: str) -> list[list[Instruction]]:
    """The instructions of each stage (continuation lines joined, comments dropped)."""
    stages: list[list[Instruction]] = []
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or not (line or logical):  # comments may sit inside continuations
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        keyword, _, args = logical.partition(" ")
        logical = ""
        instruction = Instruction(keyword.upper(), args.strip())
        if instruction.keyword == "FROM":
            stages.append([])
        assert stages, "an instruction before the first FROM"
        stages[-1].append(instruction)
    return stages


def final_stage() -> list[Instruction]:
    return dockerfile_stages(DOCKERFILE.read_text())[-1]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in final_stage():
        if ins.keyword == "ENV":
            for word in shlex.split(ins.args):
                key, sep, value = word.partition("=")
                assert sep, f"ENV {ins.args!r}: use the KEY=value form"
                env[key] = value
    return env


def dockerfile_list(keyword: str) -> list[str]:
    """The arguments of one instruction of the final stage, JSON or shell form."""
    (ins,) = [i for i in final_stage() if i.keyword == keyword]
    if ins.args.startswith("["):
        value = json.loads(ins.args)
        assert isinstance(value, list)
        return [str(v) for v in value]
    return shlex.split(ins.args)


def peers(value: str) -> dict[int, tuple[str, int]]:
    """Parse `1=host:port,2=host:port,...` as `--peers` takes it."""
    out: dict[int, tuple[str, int]] = {}
    for item in value.split(","):
        node, sep, address = item.strip().partition("=")
        host, colon, port = address.rpartition(":")
        assert sep and colon and host and node.isdigit() and port.isdigit(), f"bad peer entry {item!r}"
        assert int(node) not in out, f"node {node} listed twice in {value!r}"
        out[int(node)] = (host, int(port))
    return out


def host_port(value: str) -> tuple[str, int]:
    host, colon, port = value.rpartition(":")
    assert colon and host and port.isdigit(), f"not host:port: {value!r}"
    return host, int(port)


def seconds(duration: str | int) -> int:
    """A compose duration (`60s`, `1m30s`) or systemd seconds, in seconds."""
    if isinstance(duration, int):
        return duration
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert parts and duration, f"unsupported duration {duration!r}"
    return int(parts[1] or 0) * 60 + int(parts[2] or 0)


def kube_expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' expansion of command and env values: `$(NAME)` of a variable defined
    before it, `$$` for a literal `$`; anything else is left as written."""
    out: list[str] = []
    i = 0
    while i < len(value):
        if value.startswith("$$", i):
            out.append("$")
            i += 2
        elif value.startswith("$(", i) and (end := value.find(")", i + 2)) != -1:
            name = value[i + 2 : end]
            out.append(env.get(name, value[i : end + 1]))
            i = end + 1
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


# --- the brokers, as each file defines them ----------------------------------------------


@dataclass(frozen=True)
class ComposeBroker:
    service: str
    spec: dict[str, Any]
    env: dict[str, str]  # the image's ENV with the service's environment over it


def compose_brokers() -> list[ComposeBroker]:
    image_env = dockerfile_env()
    brokers = []
    for name, spec in compose()["services"].items():
        if spec.get("build", {}).get("dockerfile") != "deploy/Dockerfile":
            continue
        env = dict(image_env)
        env.update({k: str(v) for k, v in (spec.get("environment") or {}).items()})
        brokers.append(ComposeBroker(name, spec, env))
    return brokers


def statefulset() -> dict[str, Any]:
    (sts,) = [o for o in kube_objects() if o["kind"] == "StatefulSet"]
    return sts


def sentinel_container() -> dict[str, Any]:
    (container,) = statefulset()["spec"]["template"]["spec"]["containers"]
    return container


def pod_env(ordinal: int, namespace: str = "streaming") -> dict[str, str]:
    """The environment of the StatefulSet's pod `ordinal` as the kubelet builds it."""
    pod = f"{statefulset()['metadata']['name']}-{ordinal}"
    fields = {"metadata.name": pod, "metadata.namespace": namespace}
    env: dict[str, str] = {}
    for var in sentinel_container()["env"]:
        if "value" in var:
            env[var["name"]] = kube_expand(str(var["value"]), env)
        else:
            env[var["name"]] = fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def container_ports() -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in sentinel_container()["ports"]}


# --- every file parses ---------------------------------------------------------------------


def deploy_files(*suffixes: str) -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in suffixes)


@pytest.mark.parametrize("path", deploy_files(".yml", ".yaml"), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_file_parses(path: Path) -> None:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert documents and all(isinstance(d, dict) for d in documents)


@pytest.mark.parametrize("path", deploy_files(".json"), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_json_file_parses(path: Path) -> None:
    assert isinstance(json.loads(path.read_text()), dict)


def test_the_expected_files_exist() -> None:
    for path in (COMPOSE, DOCKERFILE, DOCKERIGNORE, PROMETHEUS, DASHBOARD, KUBERNETES, SYSTEMD):
        assert path.is_file(), path
    assert deploy_files(".yml", ".yaml") and deploy_files(".json")


# --- the image ----------------------------------------------------------------------------


def test_dockerfile_builds_the_project_on_python_311_slim() -> None:
    stages = dockerfile_stages(DOCKERFILE.read_text())
    for stage in stages:
        base = stage[0].args.split()[0]
        assert base == "python:3.11-slim", base
    instructions = [i for stage in stages for i in stage]
    copies = [i.args for i in instructions if i.keyword == "COPY" and "--from" not in i.args]
    assert any("pyproject.toml" in c for c in copies), "the build context's project is not copied"
    assert any(i.keyword == "RUN" and "pip " in i.args for i in final_stage()), "nothing pip-installed"
    assert dockerfile_list("ENTRYPOINT") == ["sentinel", "run"]


def test_dockerfile_runs_as_a_numeric_non_root_user() -> None:
    (user,) = dockerfile_list("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, f"USER {user}: Kubernetes' runAsNonRoot needs a numeric uid"
    assert not gid or (gid.isdigit() and int(gid) != 0)


def test_dockerfile_exposes_the_ports_the_image_listens_on() -> None:
    env = dockerfile_env()
    used = {int(env["SENTINEL_PORT"]), int(env["SENTINEL_PEER_PORT"]), int(env["SENTINEL_METRICS_PORT"])}
    exposed = {int(p.split("/")[0]) for p in dockerfile_list("EXPOSE")}
    assert exposed == used == {9092, 9093, 9100}
    assert env["SENTINEL_HOST"] == env["SENTINEL_METRICS_HOST"] == env["SENTINEL_PEER_HOST"] == "0.0.0.0"


def test_dockerfile_keeps_the_data_directory_on_its_volume() -> None:
    (volume,) = dockerfile_list("VOLUME")
    data = dockerfile_env()["SENTINEL_DATA"]
    assert Path(data).is_relative_to(volume) and data != volume, (data, volume)


def test_dockerignore_lets_through_what_the_dockerfile_copies() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "an allow-list: everything is out unless let back in"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for stage in dockerfile_stages(DOCKERFILE.read_text()):
        for ins in stage:
            if ins.keyword == "COPY" and "--from" not in ins.args:
                *sources, _destination = shlex.split(ins.args)
                for source in sources:
                    assert source.rstrip("/") in allowed, f"COPY {source} is excluded from the build context"
                    assert (ROOT / source).exists(), source


# --- docker compose ------------------------------------------------------------------------


def test_compose_has_three_brokers_with_distinct_node_ids() -> None:
    brokers = compose_brokers()
    assert [b.service for b in brokers] == ["sentinel-1", "sentinel-2", "sentinel-3"]
    assert sorted(int(b.env["SENTINEL_NODE_ID"]) for b in brokers) == [1, 2, 3]
    images = {b.spec["image"] for b in brokers}
    assert len(images) == 1, images
    for broker in brokers:
        build = broker.spec["build"]
        context = (DEPLOY / build["context"]).resolve()
        assert (context / "pyproject.toml").is_file(), "the build context is not the repository root"
        assert (context / build["dockerfile"]).resolve() == DOCKERFILE


def test_compose_peer_lists_name_every_broker_at_its_peer_port() -> None:
    brokers = compose_brokers()
    by_id = {int(b.env["SENTINEL_NODE_ID"]): b for b in brokers}
    for broker in brokers:
        listed = peers(broker.env["SENTINEL_PEERS"])
        assert set(listed) == set(by_id), f"{broker.service}: SENTINEL_PEERS names nodes {sorted(listed)}"
        for node_id, (host, port) in listed.items():
            peer = by_id[node_id]
            assert host == peer.service, f"{broker.service}: node {node_id} is {peer.service}, not {host}"
            assert port == int(peer.env["SENTINEL_PEER_PORT"]), f"{broker.service}: node {node_id} port"


def test_compose_brokers_advertise_their_service_names() -> None:
    names = set(compose()["services"])
    for broker in compose_brokers():
        host, port = host_port(broker.env["SENTINEL_ADVERTISE"])
        assert host == broker.service and host in names, f"{broker.service} advertises {host}"
        assert broker.spec.get("hostname", host) == host
        assert port == int(broker.env["SENTINEL_PORT"])


def test_compose_brokers_keep_their_data_on_their_own_named_volumes() -> None:
    declared = set(compose()["volumes"])
    (image_volume,) = dockerfile_list("VOLUME")
    used = []
    for broker in compose_brokers():
        mounts = [v.split(":") for v in broker.spec["volumes"]]
        data = Path(broker.env["SENTINEL_DATA"])
        holding = [(source, target) for source, target, *_ in mounts if data.is_relative_to(target)]
        assert len(holding) == 1, f"{broker.service}: no volume holds {data}"
        source, target = holding[0]
        assert source in declared, f"{broker.service}: volume {source} is not declared"
        assert target == image_volume
        used.append(source)
    assert len(set(used)) == len(used), f"brokers share a volume: {used}"


def test_compose_brokers_have_a_client_healthcheck() -> None:
    for broker in compose_brokers():
        check = broker.spec["healthcheck"]
        test = check["test"]
        assert test[0] == "CMD", test
        assert test[1:5] == ["sentinel", "topics", "list", "--broker"], test
        host, port = host_port(test[5])
        assert host in {"localhost", "127.0.0.1"} and port == int(broker.env["SENTINEL_PORT"])
        for key in ("interval", "timeout", "retries", "start_period"):
            assert key in check, f"{broker.service}: healthcheck {key}"


def test_compose_values_are_ones_sentinel_run_takes() -> None:
    syncs = {mode.value for mode in SyncMode}
    for broker in compose_brokers():
        assert broker.env["SENTINEL_SYNC"] in syncs
        for key in ("SENTINEL_NODE_ID", "SENTINEL_PORT", "SENTINEL_PEER_PORT", "SENTINEL_METRICS_PORT"):
            assert broker.env[key].isdigit(), f"{broker.service}: {key}={broker.env[key]!r}"


def test_compose_bind_mounts_exist() -> None:
    for name, spec in compose()["services"].items():
        for volume in spec.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"


def test_shutdown_grace_is_the_same_everywhere() -> None:
    systemd = re.search(r"^TimeoutStopSec=(\d+)$", SYSTEMD.read_text(), re.M)
    assert systemd and int(systemd[1]) == GRACE_SECONDS
    for broker in compose_brokers():
        assert seconds(broker.spec["stop_grace_period"]) == GRACE_SECONDS
        assert broker.spec.get("stop_signal", "SIGTERM") == "SIGTERM"
    spec = statefulset()["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] == GRACE_SECONDS


# --- Prometheus and Grafana ----------------------------------------------------------------


def mount_target(service: str, host_path: Path) -> str:
    """Where `service` mounts the host path (relative to deploy/)."""
    for volume in compose()["services"][service]["volumes"]:
        source, target, *_ = volume.split(":")
        if source.startswith(".") and (DEPLOY / source).resolve() == host_path.resolve():
            return target
    raise AssertionError(f"{service} does not mount {host_path}")


def test_prometheus_scrapes_exactly_the_three_brokers() -> None:
    config = load_yaml(PROMETHEUS)
    targets = [
        target
        for job in config["scrape_configs"]
        if job.get("metrics_path", "/metrics") == "/metrics"
        for static in job["static_configs"]
        for target in static["targets"]
    ]
    expected = [f"{b.service}:{b.env['SENTINEL_METRICS_PORT']}" for b in compose_brokers()]
    assert sorted(targets) == sorted(expected)
    prometheus = compose()["services"]["prometheus"]
    config_file = next(a.split("=", 1)[1] for a in prometheus["command"] if a.startswith("--config.file="))
    assert mount_target("prometheus", PROMETHEUS) == config_file


def grafana_provisioning() -> Path:
    mounted = mount_target("grafana", GRAFANA / "provisioning")
    assert mounted == "/etc/grafana/provisioning", "Grafana reads provisioning from /etc/grafana/provisioning"
    return GRAFANA / "provisioning"


def datasources() -> list[dict[str, Any]]:
    files = sorted((grafana_provisioning() / "datasources").glob("*.yml"))
    assert files
    return [d for f in files for d in load_yaml(f)["datasources"]]


def test_grafana_datasource_is_the_compose_prometheus() -> None:
    (source,) = datasources()
    assert source["type"] == "prometheus" and source["uid"]
    assert source["url"] == "http://prometheus:9090"
    assert "prometheus" in compose()["services"]
    scrape = load_yaml(PROMETHEUS)["global"]["scrape_interval"]
    # $__rate_interval is derived from it: it must not be shorter than the scrape interval.
    assert seconds(source["jsonData"]["timeInterval"]) >= seconds(scrape)


def test_grafana_dashboard_provider_points_at_the_dashboard_file() -> None:
    files = sorted((grafana_provisioning() / "dashboards").glob("*.yml"))
    (provider,) = [p for f in files for p in load_yaml(f)["providers"]]
    assert provider["type"] == "file"
    mounted = mount_target("grafana", DASHBOARD.parent)
    assert provider["options"]["path"] == mounted
    home = compose()["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{mounted}/{DASHBOARD.name}"


# --- the dashboard -------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels() -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard()["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # a collapsed row holds its panels
    return panels


def dashboard_queries() -> Iterator[tuple[str, str, str]]:
    """(panel title, expression, legend) of every query."""
    for panel in dashboard_panels():
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"], target.get("legendFormat", "")


def test_dashboard_panels_are_well_formed() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    panels = dashboard_panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    uids = {d["uid"] for d in datasources()}
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"{panel['title']} has no query"
        for ref in [panel["datasource"], *(t["datasource"] for t in panel["targets"])]:
            assert ref["uid"] in uids, f"{panel['title']}: datasource {ref['uid']} is not provisioned"


def test_dashboard_shows_what_the_cluster_needs_watched() -> None:
    """Throughput, latency, lag, Raft roles, terms, elections, commits and peer links."""
    queried = {name for _, expr, _ in dashboard_queries() for name in metric_names(expr)}
    for needed in (
        "sentinel_messages_produced_total",
        "sentinel_messages_consumed_total",
        "sentinel_produce_latency_seconds_bucket",
        "sentinel_consume_latency_seconds_bucket",
        "sentinel_partition_lag",
        "sentinel_raft_role",
        "sentinel_raft_term",
        "sentinel_raft_elections_total",
        "sentinel_raft_leader_changes_total",
        "sentinel_raft_commit_latency_seconds_bucket",
        "sentinel_raft_follower_lag",
        "sentinel_peer_bytes_sent_total",
        "sentinel_peer_bytes_received_total",
        "sentinel_peer_reconnects_total",
    ):
        assert needed in queried, f"no panel shows {needed}"


# The kinds of metric prometheus_client defines, and the family each constructor makes.
METRIC_CONSTRUCTORS = {
    "Counter": "counter",
    "Gauge": "gauge",
    "Histogram": "histogram",
    "Summary": "summary",
    "CounterMetricFamily": "counter",
    "GaugeMetricFamily": "gauge",
    "HistogramMetricFamily": "histogram",
    "SummaryMetricFamily": "summary",
}


@dataclass(frozen=True)
class Metric:
    kind: str
    name: str  # a counter's without `_total`: prometheus_client adds it
    labels: tuple[str, ...] | None  # None: not written as a literal, so not checked

    def exposed(self) -> dict[str, frozenset[str]]:
        """Each series name a scrape shows, with its labels (target labels aside)."""
        labels = frozenset(self.labels or ())
        n = self.name
        match self.kind:
            case "counter":
                return {f"{n}_total": labels, f"{n}_created": labels}
            case "histogram":
                return {f"{n}_bucket": labels | {"le"}, f"{n}_sum": labels, f"{n}_count": labels}
            case "summary":
                return {n: labels | {"quantile"}, f"{n}_sum": labels, f"{n}_count": labels}
            case _:
                return {n: labels}


def metric(kind: str, name: str, labels: tuple[str, ...] | None) -> Metric:
    if kind == "counter" and name.endswith("_total"):
        name = name.removesuffix("_total")
    return Metric(kind, name, labels)


def literal_labels(node: ast.expr | None) -> tuple[str, ...] | None:
    """A label list written as a literal; None when it is computed (then it is not checked)."""
    if not isinstance(node, ast.List | ast.Tuple):
        return None
    labels = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return tuple(labels) if len(labels) == len(node.elts) else None


@functools.cache
def defined_metrics() -> dict[str, Metric]:
    """Every metric the sentinel package defines (metrics.py, node.py's scrape-time gauges
    and whatever the cluster adds), read from the source: constructor, name, labels."""
    found: dict[str, Metric] = {}
    for path in (ROOT / "sentinel").rglob("*.py"):
        if "generated" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            constructor = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if constructor not in METRIC_CONSTRUCTORS or not node.args:
                continue
            first = node.args[0]
            if not (isinstance(first, ast.Constant) and str(first.value).startswith("sentinel_")):
                continue
            keywords = {k.arg: k.value for k in node.keywords}
            if constructor.endswith("MetricFamily"):
                labels_node = keywords.get("labels", node.args[3] if len(node.args) > 3 else None)
            else:
                labels_node = keywords.get("labelnames", node.args[2] if len(node.args) > 2 else None)
            labels = literal_labels(labels_node) if labels_node is not None else ()
            m = metric(METRIC_CONSTRUCTORS[constructor], str(first.value), labels)
            assert found.get(m.name, m) == m, f"{m.name} is defined twice, differently"
            found[m.name] = m
    return found


def announced_metrics() -> dict[str, Metric]:
    announced = [metric(kind, name, labels) for name, (kind, labels) in ANNOUNCED_METRICS.items()]
    return {m.name: m for m in announced}


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bsentinel_[a-z0-9_]+\b", expr))


def labels_used(expr: str, legend: str) -> set[str]:
    used: set[str] = set()
    for clause in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr):
        used |= {label.strip() for label in clause.split(",") if label.strip()}
    for matchers in re.findall(r"\{([^}]*)\}", expr):
        used |= set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", matchers))
    used |= set(re.findall(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}", legend))
    return used


def test_metric_catalogue_finds_the_existing_metrics() -> None:
    """The source scan sees what metrics.py and node.py define (else the next test is empty)."""
    defined = defined_metrics()
    assert defined["sentinel_messages_produced"] == Metric(
        "counter", "sentinel_messages_produced", ("topic", "partition")
    )
    assert defined["sentinel_produce_latency_seconds"].kind == "histogram"
    assert defined["sentinel_partition_lag"] == Metric(
        "gauge", "sentinel_partition_lag", ("group", "topic", "partition")
    )
    assert defined["sentinel_sstable_bytes"].labels == ("level",)


def test_announced_metrics_match_the_code_once_it_defines_them() -> None:
    # Matched by the series a scrape shows, so that a gauge exported under a counter's
    # `_total` name is caught too.
    by_series = {series: m for m in defined_metrics().values() for series in [m.name, *m.exposed()]}
    for name, announced in announced_metrics().items():
        found = {by_series[s] for s in [announced.name, *announced.exposed()] if s in by_series}
        for actual in found:  # none: not built yet, and the dashboard's panel stays empty until it is
            assert actual.kind == announced.kind, (
                f"{actual.name} is a {actual.kind}, the dashboard expects a {announced.kind}"
            )
            if actual.labels is not None:
                assert set(actual.labels) == set(announced.labels or ()), f"{name} labels {actual.labels}"


def test_every_metric_the_dashboard_queries_exists_with_its_labels() -> None:
    series: dict[str, frozenset[str] | None] = {}
    for m in [*announced_metrics().values(), *defined_metrics().values()]:  # the code wins
        for name, labels in m.exposed().items():
            series[name] = None if m.labels is None else labels
    for title, expr, legend in dashboard_queries():
        names = metric_names(expr)
        unknown = names - set(series)
        assert not unknown, f"panel {title!r} queries {sorted(unknown)}, which Sentinel does not export"
        known = [series[n] for n in names]
        if any(labels is None for labels in known):
            continue
        allowed = set(TARGET_LABELS).union(*(labels or () for labels in known))
        stray = labels_used(expr, legend) - allowed
        assert not stray, f"panel {title!r} uses labels {sorted(stray)} that {sorted(names)} do not have"


def test_label_and_name_extraction() -> None:
    expr = 'sum by (group, topic) (max by (group,topic,partition) (sentinel_partition_lag{group!="x"}))'
    assert metric_names(expr) == {"sentinel_partition_lag"}
    assert labels_used(expr, "{{ group }} / {{topic}}") == {"group", "topic", "partition"}
    assert metric("counter", "sentinel_x_total", ("a",)).exposed()["sentinel_x_total"] == {"a"}
    assert "le" in metric("histogram", "sentinel_h", ()).exposed()["sentinel_h_bucket"]


# --- Kubernetes ----------------------------------------------------------------------------


def headless_service() -> dict[str, Any]:
    return kube_object("Service", statefulset()["spec"]["serviceName"])


def test_kubernetes_objects_have_the_kinds_and_fields_expected() -> None:
    kinds = sorted(o["kind"] for o in kube_objects())
    assert kinds == ["PodDisruptionBudget", "Service", "Service", "StatefulSet"]
    for obj in kube_objects():
        assert obj["apiVersion"] and obj["metadata"]["name"], obj
    headless = headless_service()
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True, "peers must resolve before they are ready"
    client = kube_object("Service", "sentinel")
    assert client["spec"].get("clusterIP") != "None"
    sts = statefulset()["spec"]
    assert sts["podManagementPolicy"] == "Parallel", "OrderedReady would wait for a quorum that cannot form"
    labels = sts["template"]["metadata"]["labels"]
    assert sts["selector"]["matchLabels"].items() <= labels.items()
    for service in (headless, client):
        assert service["spec"]["selector"].items() <= labels.items()
    pdb = kube_object("PodDisruptionBudget", "sentinel")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1


def test_kubernetes_service_ports_reach_named_container_ports() -> None:
    ports = container_ports()
    env = pod_env(0)
    assert ports == {
        "client": int(env["SENTINEL_PORT"]),
        "peer": int(env["SENTINEL_PEER_PORT"]),
        "metrics": int(env["SENTINEL_METRICS_PORT"]),
    }
    assert set(ports.values()) == {int(p) for p in dockerfile_list("EXPOSE")}
    for name in ("sentinel", headless_service()["metadata"]["name"]):
        for port in kube_object("Service", name)["spec"]["ports"]:
            assert port["targetPort"] in ports and port["port"] == ports[port["targetPort"]], port


def test_kubernetes_peer_list_matches_replicas_and_the_headless_service() -> None:
    sts = statefulset()
    name, replicas = sts["metadata"]["name"], sts["spec"]["replicas"]
    headless = headless_service()["metadata"]["name"]
    assert replicas == 3
    for ordinal in range(replicas):
        env = pod_env(ordinal, namespace="streaming")
        listed = peers(env["SENTINEL_PEERS"])
        assert sorted(listed) == list(range(1, replicas + 1))
        for node_id, (host, port) in listed.items():
            assert host == f"{name}-{node_id - 1}.{headless}.streaming.svc.cluster.local"
            assert port == container_ports()["peer"]
        advertised = host_port(env["SENTINEL_ADVERTISE"])
        assert advertised == (
            f"{name}-{ordinal}.{headless}.streaming.svc.cluster.local",
            container_ports()["client"],
        )
        assert not any("$(" in value for value in env.values()), "an env reference the kubelet cannot resolve"


def test_kubernetes_node_id_is_the_pod_ordinal_plus_one(tmp_path: Path) -> None:
    """Run the container's command as the kubelet would, with `sentinel` replaced by a stub
    printing the node id and its arguments."""
    stub = tmp_path / "sentinel"
    stub.write_text('#!/bin/sh\necho "$SENTINEL_NODE_ID $*"\n')
    stub.chmod(0o755)
    container = sentinel_container()
    for ordinal in range(statefulset()["spec"]["replicas"]):
        env = pod_env(ordinal)
        command = [kube_expand(part, env) for part in container["command"] + container.get("args", [])]
        assert command[0] == "/bin/sh"
        result = subprocess.run(
            command,
            env={**env, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"},
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        assert result.stdout.split() == [str(ordinal + 1), "run"], result


def test_kubernetes_pod_keeps_its_data_on_its_claim() -> None:
    sts = statefulset()["spec"]
    (claim,) = sts["volumeClaimTemplates"]
    assert (
        claim["spec"]["accessModes"] == ["ReadWriteOnce"]
        and claim["spec"]["resources"]["requests"]["storage"]
    )
    data = Path(pod_env(0)["SENTINEL_DATA"])
    (mount,) = [m for m in sentinel_container()["volumeMounts"] if m["name"] == claim["metadata"]["name"]]
    assert data.is_relative_to(mount["mountPath"]) and data != Path(mount["mountPath"])
    (user,) = dockerfile_list("USER")
    uid, _, gid = user.partition(":")
    security = sts["template"]["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == int(uid) and security["fsGroup"] == int(gid or uid), (
        "the claim must be writable"
    )


def test_kubernetes_probes_resources_and_scrape_annotations() -> None:
    container = sentinel_container()
    ports = container_ports()
    readiness = container["readinessProbe"]["exec"]["command"]
    assert readiness[:4] == ["sentinel", "topics", "list", "--broker"]
    assert host_port(readiness[4]) == ("127.0.0.1", ports["client"])
    for probe in ("livenessProbe", "startupProbe"):
        assert container[probe]["tcpSocket"]["port"] in ports, probe
    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"] and resources["limits"]["memory"]
    annotations = statefulset()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]
    assert annotations["prometheus.io/path"] == "/metrics"
    assert sentinel_container()["image"] == compose_brokers()[0].spec["image"]


# --- the variables `sentinel run` accepts --------------------------------------------------


@functools.cache
def run_help_env_vars() -> set[str]:
    """The variables `sentinel run --help` lists (each option shows `[env var: NAME; ...]`)."""
    result = CliRunner().invoke(app, ["run", "--help"])
    assert result.exit_code == 0, result.output
    names: set[str] = set()
    for shown in re.findall(r"\[env\s+var:\s*([^;\]]+)", result.output):
        # help wraps at 80 columns and may break a long name: drop the whitespace
        names |= {re.sub(r"\s+", "", name) for name in shown.split(",")}
    return names


def env_names_in_files() -> dict[str, set[str]]:
    """Every SENTINEL_* variable each file sets (the systemd unit's commented examples too)."""
    used: dict[str, set[str]] = {}
    used[DOCKERFILE.name] = {k for k in dockerfile_env() if k.startswith("SENTINEL_")}
    used[COMPOSE.name] = {k for b in compose_brokers() for k in b.spec.get("environment", {})}
    used[KUBERNETES.name] = {
        v["name"] for v in sentinel_container()["env"] if v["name"].startswith("SENTINEL_")
    }
    used[SYSTEMD.name] = set(re.findall(r"^#?Environment=(SENTINEL_[A-Z_]+)=", SYSTEMD.read_text(), re.M))
    return used


def test_help_lists_the_variables_it_takes() -> None:
    accepted = run_help_env_vars()
    assert {"SENTINEL_NODE_ID", "SENTINEL_PORT", "SENTINEL_GROUP_MIN_SESSION_TIMEOUT_MS"} <= accepted


def test_files_set_only_variables_sentinel_run_accepts() -> None:
    accepted = run_help_env_vars()
    landed = PENDING_CLUSTER_ENV & accepted
    if landed:
        # The cluster options are in: every name the files use must be one of them now.
        missing = PENDING_CLUSTER_ENV - accepted
        assert not missing, f"`sentinel run --help` shows {sorted(landed)} but not {sorted(missing)}"
    allowed = accepted | PENDING_CLUSTER_ENV
    for file, names in env_names_in_files().items():
        assert names, f"{file} sets no SENTINEL_* variable"
        unknown = names - allowed
        assert not unknown, f"{file} sets {sorted(unknown)}, which `sentinel run` does not take"


# --- the README ----------------------------------------------------------------------------


def test_readme_deploying_section_names_every_file() -> None:
    readme = (ROOT / "README.md").read_text()
    section = re.search(r"^## Deploying\n(.*?)(?=^## )", readme, re.M | re.S)
    assert section, "README has no Deploying section"
    for path in (COMPOSE, DOCKERFILE, PROMETHEUS, DASHBOARD, KUBERNETES, SYSTEMD):
        assert str(path.relative_to(ROOT)) in section[1], (
            f"the Deploying section does not mention {path.name}"
        )
