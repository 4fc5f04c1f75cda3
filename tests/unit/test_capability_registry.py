"""The capability registry (agent_node/registry.py): Parley's own capabilities and a user's are
described the same way, and the config loader, the plan and the report read the descriptions.

The user's capability is the example package's `best_return` (examples/parley_ippo), imported
from its folder as a package outside Parley: its config section is validated, its check runs
when the config is loaded (before anything launches), its node side builds, and its report
section is printed."""

from __future__ import annotations

import ast
import importlib.metadata
import io
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from agent_node.capability import load_capabilities, load_entry_point
from agent_node.registry import CAPABILITIES, BUILTIN_DESCRIPTIONS, builtin_descriptions, extra_nodes, node_builds
from orchestrator import report
from orchestrator.config import load_config
from protocols.run.config_errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "parley_ippo"
TINY = ROOT / "configs" / "tiny_ring.yaml"
KIND = "parley_ippo.best_return:CAPABILITY"


@pytest.fixture
def example(monkeypatch):
    """The example package on the path from its own folder, as a user's package would be (where
    another test imported it already from an installed copy, this folder's modules come first)."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    if "parley_ippo" in sys.modules:
        package = sys.modules["parley_ippo"]
        monkeypatch.setattr(package, "__path__", [str(EXAMPLE / "parley_ippo"), *package.__path__])


def with_capability(**settings) -> list[str]:
    entry = ", ".join([f"kind: '{KIND}'", *(f"{key}: {value}" for key, value in settings.items())])
    return [f"capabilities=[{{{entry}}}]"]


def test_every_builtin_describes_itself_and_its_node_side_resolves():
    descriptions = builtin_descriptions()
    assert [d.name for d in descriptions] == list(BUILTIN_DESCRIPTIONS)
    assert all(d.node_side and d.section for d in descriptions)
    # the sections named are the run schema's own fields
    run = load_config(TINY)
    for description in descriptions:
        value = run
        for part in description.section.split("."):
            assert part in type(value).model_fields, description.section
            value = getattr(value, part)


def test_a_users_capability_gets_its_section_validated_and_typed(example):
    run = load_config(TINY, with_capability(every_steps=20, window=3))
    (config,) = run.capabilities
    assert config.kind == KIND and (config.every_steps, config.window) == (20, 3)
    assert type(config).__name__ == "BestReturnConfig"
    with pytest.raises(ConfigError) as error:
        load_config(TINY, with_capability(every_steps=20, windw=3))
    assert "capabilities.0.windw" in str(error.value)
    with pytest.raises(ConfigError, match=r"capabilities\.0\.every_steps"):
        load_config(TINY, with_capability(every_steps=0))


def test_a_users_check_runs_when_the_config_is_loaded(example):
    with pytest.raises(ConfigError) as error:
        load_config(TINY, with_capability(every_steps=61))  # tiny_ring runs 60 steps
    assert "capabilities.0.every_steps: expected at most run.steps (60), got 61" in str(error.value)


def test_what_cannot_be_a_capability_is_refused_naming_the_entry(example):
    for kind, message in [("no_such_capability", "an installed plugin"),
                          ("parley_ippo.best_return:build", "expected an agent_node.registry.CapabilityDescription"),
                          ("consensus", "Parley's own capability")]:
        with pytest.raises(ConfigError) as error:
            load_config(TINY, [f"capabilities=[{{kind: '{kind}'}}]"])
        assert "capabilities.0.kind" in str(error.value) and message in str(error.value), str(error.value)
    with pytest.raises(ConfigError, match="more than once"):
        load_config(TINY, [f"capabilities=[{{kind: '{KIND}'}}, {{kind: '{KIND}'}}]"])


def test_an_installed_entry_point_names_a_capability(example, monkeypatch):
    point = importlib.metadata.EntryPoint(name="best_return", value=KIND, group="parley.capabilities")
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [point] if group == "parley.capabilities" else [])
    (config,) = load_config(TINY, ["capabilities=[{kind: best_return, every_steps: 30}]"]).capabilities
    assert CAPABILITIES.describe(config.kind).name == "best_return" and config.every_steps == 30


def test_the_resolved_config_names_the_capability_and_loads_again(example):
    from orchestrator.config import resolve, validate_config

    run = load_config(TINY, with_capability(every_steps=20))
    data = resolve(run)
    assert data["capabilities"] == [{"kind": KIND, "every_steps": 20, "window": 10}]
    assert validate_config(data).capabilities == run.capabilities


def test_the_node_builds_the_users_capability_after_parleys_own_and_it_records(example):
    run = load_config(TINY, with_capability(every_steps=10, window=2))
    assert node_builds(run)[-1] == "parley_ippo.best_return:build"

    class StandInNode:
        def __init__(self):
            self.records = []

        def write_metrics(self, record):
            self.records.append(record)

    node = StandInNode()
    (capability,) = load_capabilities(run, node, node_builds(run)[-1:])
    # two env copies; copy 0 ends an episode (return 3) at step 10, copy 1 (return 1) at step 20
    for step, reward, ends in [(5, [1.0, 0.5], [False, False]), (10, [2.0, 0.5], [True, False]), (20, [0.0, 0.0], [False, True])]:
        capability.on_transition(None, types.SimpleNamespace(
            copy_index=np.array([0, 1]), reward=np.array(reward), terminated=np.array(ends), truncated=np.array([False, False])))
        capability.after_observation(types.SimpleNamespace(step=step), 0.0)
    assert node.records == [{"best_return/window_mean": 3.0, "best_return/best": 3.0},
                            {"best_return/window_mean": 2.0, "best_return/best": 3.0}]
    without = load_config(TINY)
    assert "parley_ippo.best_return:build" not in node_builds(without)  # a run that does not list it
    assert load_entry_point("parley_ippo.best_return:build")(without, node) is None  # nor builds without its section


def test_the_report_prints_the_users_section_and_its_headline(example, tmp_path):
    from rich.console import Console

    run_dir = tmp_path / "run"
    (run_dir / "nodes" / "agent_0").mkdir(parents=True)
    (run_dir / "nodes" / "agent_1").mkdir(parents=True)
    (run_dir / "resolved.yaml").write_text(f"capabilities: [{{kind: '{KIND}', every_steps: 10}}]\n")
    (run_dir / "events.jsonl").write_text(json.dumps({"t": 0.0, "event": "started", "node": None}) + "\n")
    for node, bests in (("agent_0", [1.0, 2.5]), ("agent_1", [4.0])):
        rows = [{"step": 10 * (i + 1), "t": float(i), "best_return/best": b} for i, b in enumerate(bests)]
        (run_dir / "nodes" / node / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = report.summarize_run(run_dir)
    assert summary["best_return"] == {"best_by_agent": {"agent_0": 2.5, "agent_1": 4.0}, "team_best": 4.0}
    assert summary["headline"]["best_return_team"] == 4.0
    out = io.StringIO()
    report.render_run(summary, Console(file=out, width=300))
    assert "best return (mean of an agent's recent episodes): team best 4; agent_0 2.5, agent_1 4" in out.getvalue()


def test_a_users_capability_this_machine_cannot_import_is_named_in_the_report(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "resolved.yaml").write_text("capabilities: [{kind: 'not_installed_here.mod:CAPABILITY'}]\n")
    summary = report.summarize_run(run_dir)
    assert summary["capabilities_unreadable"][0][0] == "not_installed_here.mod:CAPABILITY"
    assert report.capability_lines(summary)[0].startswith("capability not_installed_here.mod:CAPABILITY: its report section is left out")


def test_the_capabilities_own_nodes_come_from_their_descriptions():
    goals = load_config(ROOT / "configs" / "goals_supervisor.yaml")
    assert [(n.node_id, n.role, n.service) for n in extra_nodes(goals)] == [("supervisor", "supervisor", "goals")]
    centralized = load_config(TINY, ["training.mode=centralized", "protocols.consensus.enabled=false"])
    assert [(n.node_id, n.module, n.service) for n in extra_nodes(centralized)] == [("learner", "agent_node.ctde.learner_node", "ctde")]


# The rooms of Parley's own capabilities: the orchestrator reaches them only through the registry.
CAPABILITY_MODULES = ("agent_node.consensus", "agent_node.landmarks", "agent_node.goals", "agent_node.amigo",
                      "agent_node.ctde", "agent_node.offline", "agent_node.peer_protocols")


def test_no_module_of_the_orchestrator_imports_a_capability():
    importers = []
    for path in sorted((ROOT / "orchestrator").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            importers += [f"{path.relative_to(ROOT)}: {name}" for name in names
                          if any(name == module or name.startswith(module + ".") for module in CAPABILITY_MODULES)]
    assert importers == []
