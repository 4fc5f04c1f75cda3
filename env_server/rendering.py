"""Frames of each evaluation's first episode, a part of the env server (env_server/part.py).

With `env.render_evaluation` the evaluation copies are built with `render_mode="rgb_array"`, and
the frames of copy 0 (its reset, then each step it plays, its final frame included) are kept
while an evaluation runs and saved when it ends, as `frames/evaluation_<n>.npz` in the server's
node directory (`frames`: (T, height, width, 3)). The `Evaluator` calls it at the evaluation's
start, around each of its steps and at its end.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from env_server.part import ServerPart
from env_server.vector import VectorizedParallelEnv

log = logging.getLogger("env_server")


class Rendering(ServerPart):
    name = "rendering"

    def __init__(self, frames_dir: Path, eval_envs: VectorizedParallelEnv, env_name: str) -> None:
        self.frames_dir, self.eval_envs, self.env_name = frames_dir, eval_envs, env_name
        self.frames: list[np.ndarray] = []
        self.first_copy_running = False  # copy 0 plays the step under way (its final frame included)

    def evaluation_began(self) -> None:
        self.frames = []
        self._render_first_copy()

    def before_evaluation_step(self) -> None:
        self.first_copy_running = self.eval_envs.copy_running(0)

    def after_evaluation_step(self) -> None:
        if self.first_copy_running:
            self._render_first_copy()

    def evaluation_ended(self, index: int) -> None:
        """Save the frames of evaluation `index` (its number, from 1)."""
        if not self.frames:
            return
        self.frames_dir.mkdir(parents=True, exist_ok=True)
        path = self.frames_dir / f"evaluation_{index}.npz"
        np.savez_compressed(path, frames=np.stack(self.frames))
        log.info("saved %d frames of evaluation %d to %s", len(self.frames), index, path)
        self.frames = []

    def _render_first_copy(self) -> None:
        frame = self.eval_envs.copies[0].render()
        if not isinstance(frame, np.ndarray) or frame.ndim != 3:
            raise RuntimeError(f"env.render_evaluation: {self.env_name}'s render() with render_mode 'rgb_array' "
                               f"should give an image (height, width, 3), got {type(frame).__name__}")
        self.frames.append(frame)
