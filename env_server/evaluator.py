"""Evaluation of the agents, with its baselines, a part of the env server (env_server/part.py).

When an evaluation is due after a training step (`EvaluationSchedule`, evaluation.py, says when
and keeps its count and metrics), the core hands that step's result to `begin`: it is held back,
the evaluation copies are reset with the evaluation seed (every evaluation starts from the same
one: the curve compares policies, not luck) and the evaluation's observations go out, flagged
`evaluation=True`. While it runs, the core hands every due step's actions to `step`. When every
evaluation copy has played its episode, the evaluation's rows and metrics are written, the
frames saved (a `Rendering`, rendering.py, with `env.render_evaluation`) and the held-back
training observation goes out: training resumes where it stopped.

At the first evaluation the baselines (baselines.py: the random policy's return and, where the
env has one, the oracle's) are written too, measured on the very episodes the agents will play.
"""

from __future__ import annotations

import logging
from typing import Any

from env_server.baselines import baseline_metrics
from env_server.evaluation import EvaluationSchedule, spread_end_state
from env_server.pacing import Pacing
from env_server.part import ServerPart, ServerServices
from env_server.rendering import Rendering
from env_server.vector import BatchedStep, VectorizedParallelEnv

log = logging.getLogger("env_server")

# In each evaluation's summary row: its number, from 1 (what a resumed server reads back).
EVALUATION_NUMBER_KEY = "eval/number"


class Evaluator(ServerPart):
    name = "evaluation"

    def __init__(self, server: ServerServices, eval_envs: VectorizedParallelEnv | None, *, every_steps: int | None,
                 start_step: int, eval_seed: int, pacing: Pacing, rendering: Rendering | None = None) -> None:
        self.server, self.eval_envs, self.eval_seed, self.pacing, self.rendering = server, eval_envs, eval_seed, pacing, rendering
        self.schedule = EvaluationSchedule(every_steps if eval_envs is not None else None, start_step)
        self.baselines_written = False  # eval/random_return_mean (and the oracle's), at the first evaluation

    @property
    def running(self) -> bool:
        return self.schedule.running

    def due(self, training_step: int) -> bool:
        return self.schedule.due(training_step)

    def begin(self, held_back: BatchedStep, missing: list[str]) -> None:
        """Hold back this training step's result and start an evaluation."""
        server = self.server
        self.schedule.begin(held_back, missing, server.clock())
        server.save_resume_point()
        if not self.baselines_written:
            # The lines the curve is read against, on the very episodes the agents will play.
            self.baselines_written = True
            server.write_metrics(baseline_metrics(self.eval_envs, self.eval_seed, server.env_name))
        # Every evaluation starts from the same seed: the curve compares policies, not luck.
        eval_result = self.eval_envs.reset(self.eval_seed)
        if self.rendering is not None:
            self.rendering.evaluation_began()
        server.global_view.after_reset(eval_result, self.eval_envs)
        server.broadcast(eval_result, missing=[])

    def step(self, actions: dict[str, Any], missing: list[str]) -> None:
        """One evaluation step; the evaluation ends when every copy has played its episode."""
        server = self.server
        if self.rendering is not None:
            self.rendering.before_evaluation_step()
        result = self.eval_envs.step(actions)
        if self.rendering is not None:
            self.rendering.after_evaluation_step()
        server.global_view.after_step(actions, result, self.eval_envs)
        self.schedule.record(result)
        if not self.eval_envs.all_finished:
            server.broadcast(result, missing)
            return
        # Every evaluation copy played one episode and is not reset until the next evaluation.
        held_back, metrics = self.schedule.finish(server.clock(), [spread_end_state(env) for env in self.eval_envs.copies])
        metrics.update(self.pacing.evaluation_metrics())
        if self.rendering is not None:
            self.rendering.evaluation_ended(self.schedule.completed)
        # The rows first, its summary last, then the point that counts the evaluation done. A kill
        # before the summary leaves a point that says it was running: it runs again after the
        # resume (its episode rows may then appear twice; the summary never does). A kill after
        # the summary and before the point: the resume finds the summary's number and counts the
        # evaluation done instead (Resumption.take_up). Either way no evaluation is lost.
        for row in self.schedule.episode_rows():
            server.write_metrics(row)
        metrics[EVALUATION_NUMBER_KEY] = float(self.schedule.completed)
        server.write_metrics(metrics)
        server.save_resume_point()
        server.global_view.restore_training()
        log.info("evaluation %d at step %d: return %.2f", self.schedule.completed, server.step, metrics["eval/return_mean"])
        server.broadcast(held_back.result, held_back.missing)

    def close(self) -> None:
        if self.eval_envs is not None:
            self.eval_envs.close()
