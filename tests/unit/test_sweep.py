"""`orchestrate sweep`'s pure parts: loading a sweep file, expanding the grid, validating every
point before anything is launched. No processes (the env check is off or never reached)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.overrides import parse_override
from orchestrator.sweep import expand, load_sweep, only_points, override_text, parse_seeds, validate_runs
from protocols.run.config_errors import ConfigError
from tests.conftest import REPO

TINY_RING = str(REPO / "configs" / "tiny_ring.yaml")


def write_sweep(tmp_path: Path, **spec) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"base": TINY_RING, **spec}, sort_keys=False))
    return path


def test_the_grid_expands_in_order_last_key_fastest_seeds_innermost(tmp_path):
    path = write_sweep(
        tmp_path,
        grid={"network.default_link.delay_s": [0.0, 0.02, 0.1], "network.default_link.loss": [0.0, 0.1]},
        seeds=[0, 1],
        set={"run.steps": 30},
    )
    spec, base = load_sweep(path)
    runs = expand(spec, tmp_path / "out")
    assert spec.name == "sweep"  # the file's stem
    assert base == Path(TINY_RING)
    assert len(runs) == 3 * 2 * 2
    assert [(r.point_index, r.seed) for r in runs[:4]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [r.grid_values for r in runs[::2]] == [
        {"network.default_link.delay_s": d, "network.default_link.loss": l} for d in (0.0, 0.02, 0.1) for l in (0.0, 0.1)
    ]
    third = runs[2 * 2 + 1]  # point 2 (delay 0.02, loss 0.0), seed 1
    assert third.point == "p02-delay_s0.02_loss0.0"
    assert third.run_dir == str(tmp_path / "out" / "p02-delay_s0.02_loss0.0-seed1")
    assert third.log == str(tmp_path / "out" / "logs" / "p02-delay_s0.02_loss0.0-seed1.log")
    # fixed overrides first, then the point's values, then the seed
    assert third.overrides == [
        "run.steps=30", "network.default_link.delay_s=0.02", "network.default_link.loss=0.0", "run.seed=1",
    ]  # fmt: skip
    assert len({r.run_dir for r in runs}) == len(runs)


def test_every_point_validates_into_the_config_it_names(tmp_path):
    path = write_sweep(tmp_path, grid={"network.default_link.loss": [0.0, 0.25]}, seeds=[3], set={"run.steps": 30})
    spec, base = load_sweep(path)
    runs = expand(spec, tmp_path / "out")
    configs = validate_runs(base, runs, check_env=False)
    assert [c.network.default_link.loss for c in configs] == [0.0, 0.25]
    assert {c.run.seed for c in configs} == {3}
    assert {c.run.steps for c in configs} == {30}


@pytest.mark.parametrize("value", [1e-6, 0.02, 3, "on", "lognormal", True, None, [32, 32], {"kind": "star"}, "1e-3"])
def test_an_override_value_parses_back_to_itself(value):
    segments, parsed = parse_override(override_text("a.b", value))
    assert segments == ["a", "b"]
    assert parsed == value and type(parsed) is type(value)


def test_a_grid_key_shared_by_two_keys_short_names_falls_back_to_the_whole_key(tmp_path):
    path = write_sweep(tmp_path, grid={"network.default_link.loss": [0.1], "network.links.0.link.loss": [0.2]},
                       set={"network.links": [{"role": "peer_links", "link": {}}]})  # fmt: skip
    spec, _ = load_sweep(path)
    (run,) = expand(spec, tmp_path)
    assert run.point == "p00-network.default_link.loss0.1_network.links.0.link.loss0.2"


def test_a_value_that_breaks_the_schema_names_the_key_and_the_points(tmp_path):
    path = write_sweep(tmp_path, grid={"network.default_link.loss": [0.0, 1.5], "run.steps": [10, 20]})
    spec, base = load_sweep(path)
    with pytest.raises(ConfigError) as caught:
        validate_runs(base, expand(spec, tmp_path / "out"), check_env=False)
    (problem,) = caught.value.problems
    assert problem.startswith("network.default_link.loss:")
    assert "got 1.5" in problem
    assert "2 point(s): p02-loss1.5_steps10, p03-loss1.5_steps20" in problem


def test_an_unknown_grid_key_is_named_with_the_valid_ones(tmp_path):
    path = write_sweep(tmp_path, grid={"network.default_link.delai_s": [0.1]})
    spec, base = load_sweep(path)
    with pytest.raises(ConfigError) as caught:
        validate_runs(base, expand(spec, tmp_path / "out"), check_env=False)
    assert "network.default_link.delai_s: unknown key" in caught.value.problems[0]
    assert "did you mean 'delay_s'" in caught.value.problems[0]


@pytest.mark.parametrize(
    "spec, expected",
    [
        ({"grid": {}}, "grid: expected at least one KEY"),
        ({"grid": {"run.steps": []}}, "run.steps: expected a non-empty list of values, got []"),
        ({"grid": {"run.steps": [10, 10]}}, "run.steps: values repeat"),
        ({"grid": {"run.seed": [1, 2]}}, "run.seed: sweep seeds with `seeds:`"),
        ({"grid": {"run.steps": [10]}, "seeds": [0, 0]}, "seeds: expected each seed once, got [0, 0]"),
        ({"grid": {"run.steps": [10]}, "seeds": []}, "expected at least one seed"),
        ({"grid": {"run.steps": [10]}, "parallel": 0}, "parallel"),
        ({"grid": {"run.steps": [10]}, "extra": 1}, "extra: unknown key; valid keys: name, base, grid, points, seeds, set, parallel"),
        ({"grid": "run.steps=10"}, "grid"),
    ],
)
def test_a_bad_sweep_file_names_the_field(tmp_path, spec, expected):
    with pytest.raises(ConfigError) as caught:
        load_sweep(write_sweep(tmp_path, **spec))
    assert expected in str(caught.value)


def test_a_key_both_fixed_and_swept_is_refused(tmp_path):
    spec, _ = load_sweep(write_sweep(tmp_path, grid={"run.steps": [10, 20]}, set={"run.steps": 5}))
    with pytest.raises(ConfigError, match="set and grid both give run.steps"):
        expand(spec, tmp_path)


def test_a_malformed_key_is_named(tmp_path):
    spec, _ = load_sweep(write_sweep(tmp_path, grid={"run..steps": [10]}))
    with pytest.raises(ConfigError, match="run..steps"):
        expand(spec, tmp_path)


def test_seeds_and_fixed_overrides_from_the_command_line_replace_and_extend_the_file(tmp_path):
    path = write_sweep(tmp_path, grid={"run.steps": [10]}, seeds=[0], set={"run.name": "x"})
    spec, _ = load_sweep(path, seeds=parse_seeds("2-4"), extra_set=["network.default_link.loss=0.1"])
    assert spec.seeds == [2, 3, 4]
    assert spec.set == {"run.name": "x", "network.default_link.loss": 0.1}
    assert parse_seeds("0,3,7") == [0, 3, 7]
    with pytest.raises(ConfigError, match="--seeds 'a-b'"):
        parse_seeds("a-b")


def test_the_cli_refuses_a_bad_grid_before_making_any_directory(tmp_path, capsys):
    path = write_sweep(tmp_path, grid={"network.default_link.loss": [0.0, 2.0]})
    sweep_dir = tmp_path / "never"
    assert main(["sweep", str(path), "--sweep-dir", str(sweep_dir)]) == 2
    assert not sweep_dir.exists()
    assert "network.default_link.loss" in capsys.readouterr().err


def test_the_cli_dry_run_lists_every_run_and_launches_nothing(tmp_path, capsys):
    path = write_sweep(tmp_path, grid={"network.default_link.loss": [0.0, 0.1]}, seeds=[0, 1])
    sweep_dir = tmp_path / "dry"
    assert main(["sweep", str(path), "--sweep-dir", str(sweep_dir), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 point(s) x 2 seed(s) = 4 run(s)" in out
    assert "p01-loss0.1-seed1: --set network.default_link.loss=0.1 --set run.seed=1" in out
    assert not sweep_dir.exists()


def test_the_cli_refuses_a_sweep_dir_that_holds_files(tmp_path, capsys, monkeypatch):
    path = write_sweep(tmp_path, grid={"run.steps": [10]})
    used = tmp_path / "used"
    used.mkdir()
    (used / "something").write_text("x")
    # The env check would build the env in a subprocess; this test is about the directory.
    monkeypatch.setattr("orchestrator.sweep._check_once_per_section", lambda source, configs: [[] for _ in configs])
    assert main(["sweep", str(path), "--sweep-dir", str(used)]) == 2
    assert "expected a new or empty directory" in capsys.readouterr().err


def test_a_run_config_sweeps_with_grid_options(tmp_path, capsys):
    spec, base = load_sweep(TINY_RING, grid=["network.default_link.loss=0,0.1", "agents.learner.hidden_sizes=[[16], [32, 32]]"],
                            seeds=[0, 1])  # fmt: skip
    assert base == Path(TINY_RING) and spec.name == "tiny_ring"
    assert spec.grid == {"network.default_link.loss": [0, 0.1], "agents.learner.hidden_sizes": [[16], [32, 32]]}
    runs = expand(spec, tmp_path)
    assert len(runs) == 2 * 2 * 2
    configs = validate_runs(base, runs, check_env=False)
    assert configs[-1].agents.learner.hidden_sizes in ([32, 32], (32, 32))
    assert main(["sweep", TINY_RING, "--grid", "run.steps=10,20", "--dry-run", "--sweep-dir", str(tmp_path / "d")]) == 0
    assert "2 point(s) x 1 seed(s) = 2 run(s)" in capsys.readouterr().out


def test_a_run_config_without_a_grid_is_refused_with_the_way_out(capsys):
    assert main(["sweep", TINY_RING, "--dry-run"]) == 2
    assert "is a run config, not a sweep file (no `base:`); give the grid with --grid KEY=V1,V2" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["loss", "=0,1", "a.b="])
def test_a_malformed_grid_option_is_named(text):
    with pytest.raises(ConfigError, match="--grid"):
        load_sweep(TINY_RING, grid=[text])


def test_points_beside_the_grid_come_after_it_with_their_own_overrides_names_and_coordinates(tmp_path):
    path = write_sweep(
        tmp_path,
        grid={"network.default_link.delay_s": [0.01, 0.02], "network.default_link.loss": [0.0, 0.1]},
        set={"run.steps": 30, "network.default_link.jitter_s": 0.001},
        points=[
            # replaces a fixed key; drawn at delay 0
            {"name": "no_jitter", "set": {"network.default_link.jitter_s": 0.0},
             "at": {"network.default_link.delay_s": 0.0, "network.default_link.loss": 0.0}},
            # a grid key of its own: drawn there by default, on a line of its own
            {"set": {"network.default_link.delay_s": 0.05, "run.steps": 40}, "line": "longer"},
            {"name": "lossy", "set": {"network.default_link.loss": 0.5}, "role": "no_talk"},
        ],
        seeds=[0, 1],
    )  # fmt: skip
    spec, base = load_sweep(path)
    runs = expand(spec, tmp_path / "out")
    assert len(runs) == (4 + 3) * 2
    extra = runs[8::2]
    assert [r.point for r in extra] == ["p04-no_jitter", "p05-delay_s0.05_steps40", "p06-lossy"]
    assert [r.point_index for r in extra] == [4, 5, 6]
    # the sweep's fixed overrides first, without those the point replaces, then its own
    assert extra[0].overrides == ["run.steps=30", "network.default_link.jitter_s=0.0", "run.seed=0"]
    assert extra[1].overrides == ["network.default_link.jitter_s=0.001", "network.default_link.delay_s=0.05",
                                  "run.steps=40", "run.seed=0"]  # fmt: skip
    assert extra[0].grid_values == {"network.default_link.jitter_s": 0.0}
    assert extra[0].coordinates == {"network.default_link.delay_s": 0.0, "network.default_link.loss": 0.0}
    assert (extra[1].coordinates, extra[1].line) == ({"network.default_link.delay_s": 0.05}, "longer")
    assert (extra[2].coordinates, extra[2].role) == ({"network.default_link.loss": 0.5}, "no_talk")
    assert runs[0].coordinates == runs[0].grid_values and runs[0].line is None and runs[0].role is None
    configs = validate_runs(base, runs, check_env=False)
    assert [c.network.default_link.jitter_s for c in configs[8::2]] == [0.0, 0.001, 0.001]
    assert [c.run.steps for c in configs[8::2]] == [30, 40, 30]


def test_only_keeps_the_named_points_by_name_prefix_or_place_and_names_an_unknown_one(tmp_path):
    path = write_sweep(tmp_path, grid={"network.default_link.loss": [0.0, 0.1]}, seeds=[0, 1],
                       points=[{"name": "lossy", "set": {"network.default_link.loss": 0.5}}])  # fmt: skip
    spec, _ = load_sweep(path)
    runs = expand(spec, tmp_path / "out")
    kept = only_points(runs, ["lossy", "p00-loss0.0"])
    assert [(run.point, run.seed) for run in kept] == [("p00-loss0.0", 0), ("p00-loss0.0", 1), ("p02-lossy", 0), ("p02-lossy", 1)]
    assert kept[2].run_dir == str(tmp_path / "out" / "p02-lossy-seed0")  # the names the whole sweep gives them
    assert [run.point for run in only_points(runs, ["p01"])] == ["p01-loss0.1", "p01-loss0.1"]
    with pytest.raises(ConfigError, match="no point named 'loss'.*p00-loss0.0, p01-loss0.1, p02-lossy"):
        only_points(runs, ["loss"])


def test_a_sweep_of_points_only_needs_no_grid(tmp_path):
    spec, _ = load_sweep(write_sweep(tmp_path, points=[{"set": {"run.steps": 10}}, {"set": {"run.steps": 20}}]))
    assert [run.point for run in expand(spec, tmp_path)] == ["p00-steps10", "p01-steps20"]


@pytest.mark.parametrize(
    "spec, expected",
    [
        ({"points": [{"set": {"run.steps": 10}, "at": {"run.seed": 0}}]}, "points.0.at: expected keys of the grid (none)"),
        ({"grid": {"run.steps": [10, 20]}, "points": [{"set": {"run.steps": 5}, "at": {"run.steps": [1]}}]},
         "run.steps: expected a single value"),
        ({"points": [{"set": {"run.steps": 10}, "role": "no_talk"}, {"set": {"run.steps": 20}, "role": "no_talk"}]},
         "points.1.role: at most one point has role no_talk"),
        ({"points": [{"set": {"run.steps": 10}, "name": "a"}, {"set": {"run.steps": 20}, "name": "a"}]},
         "points: each name once, got a"),
        ({"points": [{"set": {"run.seed": 3}}]}, "run.seed: sweep seeds with `seeds:`"),
        ({"points": [{"set": {}}]}, "points.0.set: dictionary should have at least 1 item"),
        ({"points": [{"set": {"run.steps": 10}, "name": "a b"}]}, "points.0.name: string should match pattern"),
        ({"points": [{"set": {"run.steps": 10}, "role": "floor"}]}, "points.0.role: expected one of 'no_talk', got 'floor'"),
        ({"points": [{"set": {"run.steps": 10}, "colour": "red"}]}, "points.0.colour: unknown key; valid keys: set, name, at, line, role"),
    ],
)  # fmt: skip
def test_a_bad_point_names_the_field(tmp_path, spec, expected):
    with pytest.raises(ConfigError) as caught:
        load_sweep(write_sweep(tmp_path, **spec))
    assert expected in str(caught.value)


def test_a_point_that_runs_what_another_runs_is_refused(tmp_path):
    spec, _ = load_sweep(write_sweep(tmp_path, grid={"run.steps": [10, 20]}, points=[{"set": {"run.steps": 20}, "name": "again"}]))
    with pytest.raises(ConfigError, match="points p01-steps20 and p02-again run the same overrides"):
        expand(spec, tmp_path)


def test_a_bad_value_in_a_point_names_the_key_and_the_point(tmp_path):
    spec, base = load_sweep(write_sweep(tmp_path, grid={"run.steps": [10]},
                                        points=[{"name": "broken", "set": {"network.default_link.loss": 1.5}}]))  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        validate_runs(base, expand(spec, tmp_path), check_env=False)
    (problem,) = caught.value.problems
    assert problem.startswith("network.default_link.loss:") and "1 point(s): p01-broken" in problem


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_sweep_validates(path, tmp_path):
    spec, base = load_sweep(path)
    runs = expand(spec, tmp_path)
    assert len(validate_runs(base, runs, check_env=False)) == len(runs) > 1


def test_the_main_job_fault_sweep_has_the_points_it_says():
    """configs/sweeps/main_job_faults.yaml: the delay x loss grid under env-step talk, free talk
    at delay 0, a Gilbert-Elliott row, a crash at 40% of the budget at every delay and one at 80%,
    no agreement (the floor), and silence (no learning message at all)."""
    path = REPO / "configs" / "sweeps" / "main_job_faults.yaml"
    spec, base = load_sweep(path)
    runs = expand(spec, Path("/nonexistent"))
    points = {run.point: run for run in runs if run.seed == 0}
    assert len(points) == 5 * 4 + 1 + 5 + 6 + 2 + 1 + 1 and spec.seeds == [0, 1, 2, 3, 4]
    overrides = {name: dict(text.split("=", 1) for text in run.overrides) for name, run in points.items()}
    grid = [name for name, run in points.items() if run.line is None and run.role is None and "loss" in name]
    assert len(grid) == 20 and all(overrides[name]["protocols.talk"] == "env_steps" for name in grid)
    assert all(overrides[name]["run.reproducible"] == "true" for name in grid)
    assert points["p20-free_talk"].coordinates == {"network.links.0.link.delay_steps": 0, "network.links.0.link.loss": 0.0}
    assert overrides["p20-free_talk"]["protocols.talk"] == "free"
    crashes = [name for name in points if "crash" in name]
    budget = yaml.safe_load(base.read_text())["run"]["steps"]
    for name in crashes:
        (fault,) = yaml.safe_load(overrides[name]["faults.schedule"])
        share = 0.8 if name == "p35-crash_late_d1" else 0.4
        assert fault == {"at_step": int(share * budget), "kind": "kill", "random": {"count": 1}}
        assert overrides[name]["run.reproducible"] == "false"  # a fault schedule cannot be
    assert [points[name].coordinates for name in crashes[:6]] == [
        {"network.links.0.link.delay_steps": d} for d in (0, 1, 2, 5, 10, 25)]
    assert [run.point for run in points.values() if run.role == "no_talk"] == ["p32-no_talk"]
    assert overrides["p32-no_talk"]["agents.landmarks.assignment"] == "nearest"
    assert overrides["p33-no_talk_crash"]["agents.landmarks.assignment"] == "nearest"
    silent = overrides["p34-silent"]
    assert (silent["agents.landmarks.assignment"], silent["agents.landmarks.share_hindsight"],
            silent["protocols.consensus.enabled"]) == ("nearest", "false", "false")
    late = {key: value for key, value in overrides["p35-crash_late_d1"].items() if key != "faults.schedule"}
    assert late == {key: value for key, value in overrides["p27-crash_d1"].items() if key != "faults.schedule"}


def test_the_loss_by_message_sweep_puts_its_loss_on_the_message_types_it_names():
    """configs/sweeps/main_job_loss_by_message.yaml: the main job in env steps at delay 1, 30% loss
    on the flooding tables only, the hindsight rows only, or both, beside no loss; reproducible."""
    spec, base = load_sweep(REPO / "configs" / "sweeps" / "main_job_loss_by_message.yaml")
    runs = expand(spec, Path("/nonexistent"))
    configs = validate_runs(base, runs, check_env=False)
    peer_link = {run.point: config.network.link_in_steps_between("agent_0", "agent_1")
                 for run, config in zip(runs, configs) if run.seed == 0}
    assert {point: (link.loss, link.messages) for point, link in peer_link.items()} == {
        "p00-no_loss": (0.0, None),
        "p01-loss_tables_only": (0.3, ("flood.table",)),
        "p02-loss_rows_only": (0.3, ("hindsight.rows",)),
        "p03-loss_tables_and_rows": (0.3, ("flood.table", "hindsight.rows")),
    }
    assert all(link.delay_steps == 1 for link in peer_link.values()) and spec.seeds == [0, 1, 2, 3, 4]
    assert all(config.run.reproducible and config.protocols.talk == "env_steps" for config in configs)
    assert all(not config.network.link_in_steps_between("agent_0", "env").messages for config in configs)
