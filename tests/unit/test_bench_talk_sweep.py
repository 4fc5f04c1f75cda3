"""bench/talk_sweep.py's record carries every run's numbers, so a page's points and seeds can
be added to on a later day without its run directories."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from orchestrator.cli import main
from tests.conftest import load_bench
from tests.unit.test_sweep_effects import make_sweep

talk_sweep = load_bench("talk_sweep.py")
minimum_detectable_effect = load_bench("intervals.py").minimum_detectable_effect


def timed(sweep_dir):
    """The synthetic sweep's index with the times a real sweep records for each run."""
    index = json.loads((sweep_dir / "sweep.json").read_text())
    for position, run in enumerate(index["runs"]):
        run.update(started_at=1_000_000.0 + 200 * position, duration_s=190.0)
    (sweep_dir / "sweep.json").write_text(json.dumps(index))
    return sweep_dir


def test_a_page_recorded_before_merges_with_runs_made_later_into_the_same_page(tmp_path):
    make_sweep(tmp_path / "before", seed_offsets=(0.0, 1.5, -2.0))
    page = talk_sweep.record_of(timed(tmp_path / "before"), [])
    (tmp_path / "page.json").write_text(json.dumps(page))
    shutil.rmtree(tmp_path / "before")  # a later session: the run directories are gone

    make_sweep(tmp_path / "later", seed_offsets=(0.0, 1.5, -2.0, 0.5))
    later = json.loads((tmp_path / "later" / "sweep.json").read_text())
    later.update(runs=[run for run in later["runs"] if run["seed"] == 3], seeds=[3])
    (tmp_path / "later" / "sweep.json").write_text(json.dumps(later))
    assert main(["sweep", "--merge", str(tmp_path / "page.json"), str(timed(tmp_path / "later")),
                 "--sweep-dir", str(tmp_path / "all")]) == 0  # fmt: skip

    merged = talk_sweep.record_of(tmp_path / "all", [])
    rows = {row["point"]: row["runs"] for row in merged["rows"]}
    before = {row["point"]: row["runs"] for row in page["rows"]}
    assert all(rows[point][:3] == runs for point, runs in before.items())  # the recorded seeds, number for number
    assert all([run["seed"] for run in runs] == [0, 1, 2, 3] for runs in rows.values())
    assert merged["sweep"]["seeds"] == [0, 1, 2, 3] and merged["comparisons"]["rows"][1]["n"] == 4
    assert merged["sweep"]["eval_episodes"] == [32]  # the recorded runs' too, from the record
    assert "seed 3: " in talk_sweep.render(merged, "all.json")


def test_the_page_shows_the_teams_graph_only_for_points_whose_links_follow_positions(tmp_path):
    make_sweep(tmp_path / "sweep", seed_offsets=(0.0, 1.5))
    page = talk_sweep.record_of(timed(tmp_path / "sweep"), [])
    assert "The team's graph" not in talk_sweep.render(page, "page.json")  # a ring: no graph
    first = page["rows"][0]
    for run, (edges, copy_edges, connected, changes) in zip(first["runs"], [(4.0, 1.0, 0.1, 100.0), (5.0, 2.0, 0.3, 300.0)]):
        run.update(graph_edges_mean=edges, graph_copy_edges_mean=copy_edges, graph_connected_share=connected,
                   graph_range_changes=changes)
    rendered = talk_sweep.render(page, "page.json")
    assert f"| {first['point']} | 2 | 4.50 (4.00–5.00) | 1.50 (1.00–2.00) | 20 (10–30) | 200 (100–300) |" in rendered
    graph_rows = rendered.split("**The team's graph**")[1].split("\n\n")[1].splitlines()
    assert len(graph_rows) == 3, graph_rows  # header, rule, the one point: the others have no graph


def test_the_page_says_whether_each_points_talk_arrived_where_its_runs_recorded_it(tmp_path):
    make_sweep(tmp_path / "sweep", seed_offsets=(0.0, 1.5))
    page = talk_sweep.record_of(timed(tmp_path / "sweep"), [])
    assert "**What arrived**" not in talk_sweep.render(page, "page.json")  # no agreement, no averages
    first = page["rows"][0]
    # seed 0 decided every agreement on whole tables; seed 1 on none, and half its averages ran out
    for run, (whole, age, short, average_age) in zip(first["runs"], [(1.0, 2.0, 0.0, 2.0), (0.0, 10.0, 0.5, None)]):
        run.update(landmarks_complete_fraction=whole, landmarks_decision_age_steps=age,
                   consensus_short_sessions=short, consensus_age_steps=average_age)
    rendered = talk_sweep.render(page, "page.json")
    assert f"| {first['point']} | 2 | 50 (0–100) | 6.0 (2.0–10.0) | 25 (0–50) | 2.0 (2.0–2.0) |" in rendered
    talk_rows = rendered.split("**What arrived**")[1].split("\n\n")[1].splitlines()
    assert len(talk_rows) == 3, talk_rows  # header, rule, the one point whose runs recorded it


def test_the_page_says_why_its_runs_came_from_more_than_one_build(tmp_path):
    make_sweep(tmp_path / "sweep")
    page = talk_sweep.record_of(timed(tmp_path / "sweep"), [])
    assert page["sweep"]["merged"] is False
    group = {"python": "3.11.7", "torch": "2.13.0+cpu", "seeds": [0, 1, 2], "runs": 27, "run_seconds_mean": 190.0}
    page["sweep"]["made_by"] = [{**group, "commit": "aaaaaaa"}, {**group, "commit": "bbbbbbb"}]
    assert "more than one build (the checkout changed while the sweep ran)" in talk_sweep.render(page, "page.json")
    page["sweep"]["merged"] = True
    assert "more than one build (a merged sweep, `orchestrate sweep --merge`)" in talk_sweep.render(page, "page.json")


def test_pairs_asked_for_compare_two_points_by_seed(tmp_path):
    make_sweep(tmp_path / "sweep", seed_offsets=(0.0, 1.0, -0.5), noise={("p06-free_talk", 1): 0.4})
    page = talk_sweep.record_of(timed(tmp_path / "sweep"), [], pairs=["crash_free=p06", "p00-delay_steps1_loss0.0=free_talk"])
    by_point = {row["point"]: {run["seed"]: run["return"] for run in row["runs"]} for row in page["rows"]}
    crash, delay = page["pairs"]
    assert (crash["point"], crash["baseline"]) == ("p08-crash_free", "p06-free_talk")
    differences = [by_point["p08-crash_free"][seed] - by_point["p06-free_talk"][seed] for seed in (0, 1, 2)]
    assert crash["seeds"] == [0, 1, 2] and abs(crash["difference"] - sum(differences) / 3) < 1e-9
    # What three seeds detect, recovered from the interval: the same as from the differences' SD.
    assert talk_sweep.detectable(crash) > 0 and talk_sweep.detectable(crash) == pytest.approx(minimum_detectable_effect(float(np.std(differences, ddof=1)), 3))
    assert (delay["point"], delay["baseline"]) == ("p00-delay_steps1_loss0.0", "p06-free_talk")
    rendered = talk_sweep.render(page, "page.json")
    assert "**Paired as asked** (`--pair`)" in rendered and "| p08-crash_free | p06-free_talk | 3 |" in rendered
    assert f"| {talk_sweep.detectable(crash):.2f} |" in rendered
    with pytest.raises(SystemExit, match="no point named 'crash_d9'"):
        talk_sweep.record_of(tmp_path / "sweep", [], pairs=["crash_d9=free_talk"])
    with pytest.raises(SystemExit, match="expected POINT=OTHER"):
        talk_sweep.record_of(tmp_path / "sweep", [], pairs=["crash_free"])
