"""Resuming a run, a part of the env server (env_server/part.py).

Given a `ResumeFile` (orchestrated runs), the server saves its `ResumePoint` after every training
step and at each evaluation's start and end (`save`: the core and the evaluator call it through
`ServerServices.save_resume_point`), and a server started over an existing point takes the run up
from it (`take_up`): same step counter and budget, same evaluation schedule, fresh episodes
drawn with a seed of this incarnation (what is kept and why: resume.py). The agents rejoin it with
env.join / env.reset as at the start. Without a file (a standalone server) nothing is saved.
"""

from __future__ import annotations

import logging

from env_server.evaluator import EVALUATION_NUMBER_KEY, Evaluator
from env_server.part import ServerPart, ServerServices
from env_server.resume import ResumeFile, ResumePoint
from protocols.seeds import derive_seed

log = logging.getLogger("env_server")


class Resumption(ServerPart):
    name = "resume"

    def __init__(self, server: ServerServices, resume: ResumeFile | None, evaluator: Evaluator) -> None:
        self.server, self.file, self.evaluator = server, resume, evaluator
        self.incarnation = 0
        self.rerun_evaluation = False  # resumed in the middle of an evaluation
        self.resumed_from: ResumePoint | None = None  # read by `take_up`

    def save(self) -> None:
        if self.file is None:
            return
        server, schedule = self.server, self.evaluator.schedule
        self.file.save(ResumePoint(
            step=server.step, episodes=server.counters.episodes, last_return=server.counters.last_return,
            evaluations_completed=schedule.completed, evaluation_running=schedule.running, incarnation=self.incarnation,
        ))

    def take_up(self) -> None:
        """Take up the run where the saved point left it (nothing for a fresh run); the copies
        start fresh episodes at the first reset. A point that cannot be read raises
        `DamagedStateError` (resume.py)."""
        self.resumed_from = point = self.file.load() if self.file is not None else None
        if point is None:
            return
        server = self.server
        server.step = server.counters.steps = point.step
        server.counters.episodes, server.counters.last_return = point.episodes, point.last_return
        self.evaluator.schedule.completed = point.evaluations_completed
        self.rerun_evaluation = point.evaluation_running and self.evaluator.eval_envs is not None
        if self.rerun_evaluation and server.recent_metric(EVALUATION_NUMBER_KEY) == point.evaluations_completed + 1:
            # It finished and its rows were written; the kill came before the point that says so.
            self.evaluator.schedule.completed += 1
            self.rerun_evaluation = False
        self.incarnation = point.incarnation + 1
        # New episodes, not a replay of the run's first ones: a seed of this incarnation.
        server.seed = derive_seed(server.seed, self.incarnation, "env_resume")
        server.resets_since_seed = 0
        server.run_finished = server.rules.max_steps is not None and server.step >= server.rules.max_steps
        self.save()  # the incarnation counts even if this one dies before its first step
        log.warning("resumed at step %d (incarnation %d, %d episodes, %d evaluations done%s); every copy starts a new episode",
                    point.step, self.incarnation, point.episodes, self.evaluator.schedule.completed,
                    ", the interrupted evaluation runs again" if self.rerun_evaluation else "")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
