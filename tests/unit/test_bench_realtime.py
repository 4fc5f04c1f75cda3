"""bench/realtime.py's points: each is a valid run of the main job with the straggler it names."""

from __future__ import annotations

from pathlib import Path

from orchestrator.config import load_config
from tests.conftest import load_bench

realtime = load_bench("realtime.py")
MAIN_JOB = Path(__file__).resolve().parents[2] / "configs" / "4agents_ring.yaml"


def test_a_slowed_straggler_waits_before_each_answer_on_either_clock():
    for rate in (None, 40.0):
        config = load_config(MAIN_JOB, realtime.point_settings(rate, 0.0, 400, 3, act_delay_s=0.02))
        assert config.agents.act_delay_s == {realtime.STRAGGLER: 0.02}
        assert config.env.clock == ("lockstep" if rate is None else "realtime")
    assert load_config(MAIN_JOB, realtime.point_settings(40.0, 2.0, 400, 3)).agents.act_delay_s == {}
