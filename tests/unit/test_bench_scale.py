"""bench/scale.py's default-job mode: the config it runs is the shipped one, and its table names every process."""

from __future__ import annotations

import yaml

from tests.conftest import load_bench

scale = load_bench("scale.py")


def test_the_default_job_runs_the_shipped_config_with_only_name_budget_and_live_view_changed(tmp_path):
    shipped = yaml.safe_load(scale.BASE_CONFIG.read_text())
    ran = yaml.safe_load(scale.default_job_config(None, tmp_path).read_text())
    assert ran.pop("launch") == {**shipped.pop("launch", {}), "live_view": "off"}
    assert ran["run"].pop("name") == "scale_default_job"
    shipped["run"].pop("name")
    assert ran == shipped  # world model, consensus, landmarks, the replay and the budget as shipped
    assert yaml.safe_load(scale.default_job_config(300, tmp_path).read_text())["run"]["steps"] == 300


def test_the_process_table_has_a_row_per_process_with_the_agents_peaks():
    result = {
        "exit_code": 0, "ready_s": 3.2, "steps_per_s": 95.0, "load_before": [1.0, 1.0, 1.0], "load_after": [1.5, 1.2, 1.1],
        "processes": {
            "agent_0": {"role": "agent", "rss": 300.0, "pss": 120.5, "private": 90.0, "pss_peak": 130.25},
            "env_server": {"role": "env_server", "rss": 200.0, "pss": 80.0, "private": 60.0},
            "fork_server": {"role": "fork_server", "rss": 250.0, "pss": 40.0, "private": 10.0},
        },
    }
    lines = scale.format_processes(result).splitlines()
    assert lines[1].split() == ["agent_0", "agent", "300.0", "120.5", "90.0", "130.2"]
    assert lines[2].split()[-1] == "-" and lines[3].split()[:2] == ["fork_server", "fork_server"]
    assert "exit 0, ready 3.2 s, 95.0 steps/s" in lines[-1]
