"""``sentinel sim raft``: seeded Raft simulations from the command line (issue 9: "The
simulation is also a command")."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from sentinel.cli import sim as sim_cli
from sentinel.cli.main import app
from sentinel.raft.core import RaftNode
from sentinel.raft.messages import Message, MsgType
from sentinel.raft.sim import FAULT_KINDS, Simulation, run_seed

runner = CliRunner()

# Short runs: the command's behaviour, not the simulation's coverage (tests/raft/test_sim.py).
_SHORT = ["--ticks", "60"]


def _json(args: list[str]) -> tuple[int, dict[str, Any]]:
    result = runner.invoke(app, ["sim", "raft", *args, *_SHORT, "--json"])
    return result.exit_code, json.loads(result.stdout)


def test_json_reports_runs_faults_commits_elections() -> None:
    code, out = _json(["--seeds", "3", "--first-seed", "5", "--groups", "2"])
    assert code == 0
    assert (out["runs"], out["ok"], out["failed"], out["failures"]) == (3, 3, 0, [])
    assert (out["first_seed"], out["nodes"], out["groups"]) == (5, 3, 2)
    assert list(out["faults"]) == list(FAULT_KINDS)
    assert sum(out["faults"].values()) > 0
    for key in ("commits", "elections", "leader_changes", "transfers", "crashes", "proposals"):
        assert isinstance(out[key], int), key
    assert out["commits"] > 0 and out["elections"] > 0


def test_the_same_seeds_give_the_same_digest() -> None:
    _, a = _json(["--seeds", "2", "--nodes", "5"])
    _, b = _json(["--seeds", "2", "--nodes", "5"])
    _, c = _json(["--seeds", "2", "--nodes", "5", "--first-seed", "2"])
    assert a["digest"] == b["digest"] != c["digest"]


def test_text_output() -> None:
    result = runner.invoke(app, ["sim", "raft", "--seeds", "2", *_SHORT])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "2 runs (seeds 0..1), 3 nodes" in out
    assert "ok 2   failed 0" in out
    for word in ("elections", "leader changes", "transfers", "crashes", "committed", "faults injected:"):
        assert word in out
    for kind in FAULT_KINDS:
        assert kind in out


def test_one_seed_with_its_trace_replays_the_run() -> None:
    result = runner.invoke(app, ["sim", "raft", "--seed", "4", "--trace", *_SHORT])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("[0.0] seed 4: 3 nodes")
    assert any(" deliver " in line for line in lines)
    assert any(" ready Ready(" in line for line in lines)
    expected = run_seed(4, safety_ticks=60).trace_hash
    assert f"trace hash {expected}" in result.stdout


def test_one_seed_json_carries_its_swarm_and_hash() -> None:
    code, out = _json(["--seed", "4"])
    assert code == 0
    assert out["runs"] == 1
    assert out["trace_hash"] == run_seed(4, safety_ticks=60).trace_hash
    assert out["swarm"]["election_tick"] == Simulation(4).swarm.election_tick
    assert "trace" not in out


class _AcksBeforePersist(RaftNode):
    def _respond(self, m: Message) -> None:
        if m.type is MsgType.APP_RESP:
            self._msgs.append(m)
        else:
            super()._respond(m)


def test_a_violation_exits_1_and_names_its_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The exit code is what CI and scripts see; the seed is what a person replays."""

    def broken(seed: int, **kwargs: Any) -> Simulation:
        return Simulation(seed, node_factory=_AcksBeforePersist, **kwargs)

    monkeypatch.setattr(sim_cli, "Simulation", broken)
    result = runner.invoke(app, ["sim", "raft", "--seeds", "2", *_SHORT])
    assert result.exit_code == 1
    assert "failed 2" in result.stdout
    assert "seed 0 (safety phase)" in result.stdout
    assert "replay one with: sentinel sim raft --seed 0 --nodes 3 --trace" in result.stdout
    assert "FAILED seed 0" in result.stderr

    code, out = _json(["--seeds", "1"])
    assert code == 1
    assert out["failures"][0]["seed"] == 0
    assert "acknowledged index" in out["failures"][0]["violation"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nodes", "4"], "--nodes must be 3 or 5"),
        (["--trace"], "--trace needs --seed"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["sim", "raft", *args])
    assert result.exit_code == 2
    assert message in result.stderr
