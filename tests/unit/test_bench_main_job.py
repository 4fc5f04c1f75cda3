"""bench/main_job.py's learning-speed and traffic figures, on fixed run summaries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.config import load_config
from tests.conftest import load_bench

REPO = Path(__file__).resolve().parents[2]

main_job = load_bench("main_job.py")


def evaluation(curve: list[tuple[int, float]], random: float | None = -30.0, oracle: float | None = -10.0) -> dict:
    return {"curve": curve, "random": random, "oracle": oracle}


def test_steps_to_80_percent_of_the_gap_is_the_first_evaluation_over_the_bar():
    # The bar is -30 + 0.8 * 20 = -14: reached at step 1,500, not before, whatever comes after.
    curve = [(500, -29.0), (1_000, -14.5), (1_500, -14.0), (2_000, -20.0)]
    assert main_job.steps_to_gap_share(evaluation(curve)) == 1_500
    assert main_job.steps_to_gap_share(evaluation(curve[:2])) is None
    assert main_job.steps_to_gap_share(evaluation(curve, random=None)) is None


def test_the_median_cell_counts_runs_that_never_got_there_as_slowest():
    assert main_job.gap80_cell({"steps_to_gap80": {0: 7_000, 1: 9_000, 2: None}}) == "9,000 (2/3)"
    assert main_job.gap80_cell({"steps_to_gap80": {0: 7_000, 1: None, 2: None}}) == "> 7,000 (1/3)"
    assert main_job.gap80_cell({"steps_to_gap80": {0: None}}) == "never (0/1)"
    assert main_job.gap80_cell({}) == "-"


def test_bytes_per_peer_edge_is_the_mean_over_directed_edges():
    traffic = {"a -> b": {"bytes_sent": 3.0e6, "sent": 1}, "b -> a": {"bytes_sent": 1.0e6, "sent": 1}}
    assert main_job.bytes_per_peer_edge({"peer_traffic": traffic}) == 2.0e6
    assert main_job.bytes_per_peer_edge({"peer_traffic": {}}) is None


def test_a_comparison_pairs_the_steps_to_80_percent_only_where_both_runs_got_there():
    reference = {"scores": {0: -14.0, 1: -13.0, 2: -15.0}, "steps_to_gap80": {0: 7_000, 1: 6_000, 2: 8_000}}
    variant = {"scores": {0: -15.0, 1: -14.5, 2: -15.5}, "steps_to_gap80": {0: 8_000, 1: 7_000, 2: None}}
    entry = main_job.paired_comparison(reference, variant, "main_minus_variant")
    assert entry["seeds"] == [0, 1, 2] and abs(entry["main_minus_variant"] - 1.0) < 1e-12
    assert (entry["steps_gap80_difference"], entry["steps_gap80_ci95"], entry["steps_gap80_pairs"]) == (1_000.0, 0.0, 2)
    assert main_job.steps_difference_cell(entry) == "+1,000 [+1,000, +1,000] (2 pairs)"
    variant["steps_to_gap80"] = {0: 8_000, 1: None, 2: None}
    assert main_job.steps_difference_cell(main_job.paired_comparison(reference, variant, "main_minus_variant")) == "-"


@pytest.mark.parametrize("variant", sorted(main_job.VARIANTS))
def test_every_variant_is_a_valid_reproducible_run_of_the_main_job(variant):
    overrides = [*main_job.VARIANTS[variant], "run.reproducible=true"]
    assert load_config(REPO / main_job.CONFIG, overrides).run.reproducible
    reference = main_job.REFERENCE_OF.get(variant)
    assert reference is None or reference in main_job.VARIANTS


def test_variants_taken_from_a_saved_record_compare_as_they_did_when_their_runs_were_there(tmp_path):
    # docs/results/main_job_reproducible.json was written from 10 seeds of run directories now
    # gone; read back with nothing under the root, its comparison comes out as it was saved.
    page = REPO / "docs" / "results" / "main_job_reproducible.json"
    recorded, lines = main_job.recorded_entries([page])
    summary = main_job.analyse(tmp_path, list(range(10)), ["main", "no_consensus"], recorded, lines)
    saved = json.loads(page.read_text())
    again, before = summary["paired_with_main"]["no_consensus"], saved["paired_with_main"]["no_consensus"]
    assert again["seeds"] == before["seeds"] and again["main_minus_variant"] == pytest.approx(before["main_minus_variant"])
    assert again["ci95"] == pytest.approx(before["ci95"]) and (summary["random"], summary["oracle"]) == (saved["random"], saved["oracle"])
    # on fewer seeds, the mean is over those seeds
    five = main_job.analyse(tmp_path, list(range(5)), ["main"], recorded, lines)["variants"]["main"]
    assert sorted(five["scores"]) == [0, 1, 2, 3, 4]
    assert five["mean"] == pytest.approx(sum(saved["variants"]["main"]["scores"][str(s)] for s in range(5)) / 5)


def test_a_recorded_variant_read_under_another_name_pairs_as_that_variant(tmp_path):
    # The record's `main` took its gradient steps in torch: read as `torch_updates`, it compares
    # with a `main` of today; its own name is then not read.
    page = REPO / "docs" / "results" / "main_job_reproducible.json"
    recorded, _ = main_job.recorded_entries([page], {"main": "torch_updates"})
    saved = json.loads(page.read_text())["variants"]["main"]
    assert "main" not in recorded and recorded["torch_updates"]["scores"] == saved["scores"]
    assert recorded["torch_updates"]["recorded_in"].endswith("(as main)")


def test_a_saved_record_of_another_config_is_refused(tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"config": "configs/tiny_ring.yaml", "last_evals": 5, "variants": {}}))
    with pytest.raises(SystemExit, match="expected a record of bench/main_job.py"):
        main_job.recorded_entries([other])
