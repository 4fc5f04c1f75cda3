"""The chaos soak's plan (bench/chaos.py) without processes: seeded, a fault every 10-30 s, the
schedule `orchestrate up` takes, a written plan read back, the shrinker reused on it, and the
restore check on written logs."""

from __future__ import annotations

from pathlib import Path

from bench.chaos import KINDS, ChaosFault, check_memory, check_restores, draw_plan, load_plan, overrides_of, plan_yaml, plant_dir
from orchestrator.config import load_config
from protocols.sim.simplan import shrink_plan

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "4agents_ring.yaml"


def test_the_plan_is_seeded_and_spaced_10_to_30_s_apart():
    plan = draw_plan(seed=3, minutes=20, steps_per_s=10)
    assert plan == draw_plan(seed=3, minutes=20, steps_per_s=10) and plan != draw_plan(seed=4, minutes=20, steps_per_s=10)
    steps = [fault.at_step for fault in plan.events]
    gaps = [b - a for a, b in zip(steps, steps[1:])]
    assert len(plan.events) >= 40 and all(100 <= gap <= 301 for gap in gaps), gaps
    assert {fault.kind for fault in plan.events} == set(KINDS)


def test_the_schedule_is_a_valid_config_and_a_written_plan_reads_back(tmp_path):
    plan = draw_plan(seed=1, minutes=5, steps_per_s=10)
    sections = overrides_of(plan)
    overrides = [f"{section}.{key}={value!r}".replace("'", '"').replace("None", "null")
                 for section, values in sections.items() for key, value in values.items()]
    config = load_config(CONFIG, overrides)  # a ConfigError naming the field if the schedule were wrong
    assert len(config.faults.schedule) >= len([f for f in plan.events if f.kind not in ("kill_orchestrator", "disk")])
    path = tmp_path / "plan.yaml"
    path.write_text(plan_yaml(plan, ["no env step run twice"]))
    assert load_plan(path) == (plan, None)
    path.write_text(plan_yaml(plan, ["no env step run twice"], "skip-resume-point"))
    assert load_plan(path) == (plan, "skip-resume-point")


def test_the_gap_between_faults_and_the_kinds_are_settable():
    plan = draw_plan(seed=3, minutes=20, steps_per_s=10, every_s=(5, 10), kinds=("kill_agent", "disk"))
    steps = [fault.at_step for fault in plan.events]
    assert len(plan.events) >= 100 and all(50 <= b - a <= 101 for a, b in zip(steps, steps[1:]))
    assert {fault.kind for fault in plan.events} == {"kill_agent", "disk"}
    disk = [fault for fault in plan.events if fault.kind == "disk"]
    assert all(fault.node == "" and fault.until_step > fault.at_step for fault in disk)  # the run's disk, filled then freed


def test_memory_that_grows_or_passes_its_bound_fails_and_steady_memory_passes():
    mb = 2**20
    steady = {"agent_0": [(t, 400 * mb + (t % 3) * mb) for t in range(40)]}
    growing = {"agent_0": [(t, (300 + 20 * t) * mb) for t in range(40)]}
    assert check_memory(steady, 1500).passed
    assert not check_memory(growing, 5000).passed  # grows without passing the bound
    assert not check_memory(steady, 300).passed  # passes the bound without growing
    assert not check_memory({}, 1500).passed  # nothing sampled proves nothing


def test_the_planted_bug_is_a_sitecustomize_that_disables_the_resume_point(tmp_path):
    directory = plant_dir("skip-resume-point", tmp_path)
    source = (directory / "sitecustomize.py").read_text()
    namespace: dict = {}
    import env_server.resume as resume

    original = resume.ResumeFile.save
    try:
        exec(compile(source, "sitecustomize.py", "exec"), namespace)
        assert resume.ResumeFile.save is not original  # the name the env server calls is the one replaced
    finally:
        resume.ResumeFile.save = original


def test_the_simulator_s_shrinker_cuts_a_chaos_plan_to_the_fault_that_fails():
    plan = draw_plan(seed=2, minutes=10, steps_per_s=10)
    culprit = ChaosFault(at_step=1234, kind="kill_env", node="env")
    plan = plan.with_events(plan.events + (culprit,))
    shrunk = shrink_plan(plan, lambda p: ["restores"] if culprit in p.events else [])
    assert shrunk.plan.events == (culprit,)


def test_the_restore_check_flags_a_joined_silent_incarnation_not_one_the_run_stopped_before_it_joined(tmp_path):
    """An agent incarnation that joined past step 0 must say what it lost; one stopped while it
    started (the run stopped around it, as a full disk does) restored nothing and is not silent."""
    (tmp_path / "resolved.yaml").write_text("agents: {checkpoint_every_steps: 100}\n")
    (tmp_path / "nodes" / "env").mkdir(parents=True)
    (tmp_path / "nodes" / "env" / "metrics.jsonl").write_text("")

    def incarnation(second: int, *lines: str) -> list[str]:
        stamp = f"2026-11-29 04:58:{second:02d},000 agent_0 agent_node"
        return [f"{stamp} INFO agent agent_0 starting, run seed 1, index 0"] + [f"{stamp} {line}" for line in lines]

    said = ("WARNING lost on restart: restored checkpoint of step 700 and 10 replay rows, joined the run at step 800: "
            "100 steps of learning lost")
    driving = "INFO driving agent_0 over 2 copies"
    log = tmp_path / "nodes" / "agent_0" / "log"
    log.parent.mkdir(parents=True)
    first, stopped, rejoined = incarnation(1, driving), incarnation(10, "INFO state booting -> connecting"), incarnation(20, said, driving)
    log.write_text("\n".join(first + stopped + rejoined) + "\n")
    verdict = check_restores(tmp_path, [])
    assert verdict.passed, verdict.figures
    assert "['agent_0 #1 (the run stopped before it joined)']" in verdict.figures and "1 restarts said" in verdict.figures

    log.write_text("\n".join(first + stopped + incarnation(20, driving)) + "\n")
    verdict = check_restores(tmp_path, [])
    assert not verdict.passed and "silent: ['agent_0 #2']" in verdict.figures
