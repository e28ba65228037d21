"""The settings of the RL loop (`rlts rl`, `rlts atari`): RLConfig and its parser, shared by the
loop (tasks/rl/loop.py) and by `rlts atari100k run`, which checks the keys it passes to every job.

    cfg = parse_rl_config(["--config", "debug", "--game", "Pong"], "atari.yaml")
    cfg = parse_rl_config(["--config", "wm_cpu", "--dataset", "pong.npz"], "atari.yaml")  # world model only
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from rlts.config import param
from rlts.tasks.runner import CONFIG_DIR, parse_task_config
from rlts.world_models.learner import LearnerConfig

RL_ALIASES = {"--game": "--env"}
"""Short spellings of `rlts rl` / `rlts atari`."""
TRAIN = ("agent", "world_model")
"""The values of `RLConfig.train`."""


@dataclass
class RLConfig(LearnerConfig):
    """Settings of `rlts rl` and `rlts atari` (defaults: Drama's Atari100k schedule): the
    learner's (rlts.world_models.learner.LearnerConfig: models, batches, optimiser, imagination)
    and the loop's below."""

    env: str = param("CartPole-v1", result=True)
    """Gymnasium id (Box observations, Discrete actions: the world model is built for those) or an Atari
    game name (Pong, ALE/Pong-v5)."""
    steps: int = param(100_000, within="[1, inf)")
    """Environment steps in all (summed over the environments); training stops there. With a
    dataset: updates (one per step)."""
    train: str = param("agent", result=True, choices=TRAIN, missing_as="agent")
    """What the updates train: agent (the world model, then the actor-critic) or world_model (the
    world model alone, on a dataset; no evaluation, the run reports its losses)."""
    dataset: Optional[str] = param(None, result=True, missing_as=None)
    """A recorded dataset (.npz of `rlts record`, rlts.data.trajectories) that fills the replay
    buffer instead of collecting: every transition, in the file's order, as one stream
    (num_envs, buffer_size and random_steps are then unused). Its observations must have the
    env's shape (Atari: image_size x image_size x 3 uint8) and its env must be `env`."""
    minutes: float = param(0.0, within="[0, inf)")
    """Wall-clock budget of training in minutes, summed over resumes (0: none): once spent, the
    run is checkpointed and ends at the step it reached."""
    num_envs: int = param(1, result=True, within="[1, inf)")
    """Environments stepped together (one acting batch)."""
    seed: int = param(0, result=True)
    """Seeds the models, the sampling and every episode's reset."""
    buffer_size: int = param(100_000, result=True, within="[1, inf)")
    """Replay capacity in transitions (all environments together)."""
    random_steps: int = param(1032, result=True)
    """Steps with uniformly random actions before training starts."""
    updates_per_step: float = param(1.0, result=True, within="[0, inf)")
    """World-model and actor-critic updates per environment step."""
    eval_every: int = 10_000
    """Environment steps between evaluations (0: only the final one)."""
    eval_episodes: int = 10
    """Episodes of each periodic evaluation."""
    final_eval_episodes: int = param(100, within="[1, inf)")
    """Episodes of the final evaluation (`eval_return` in results.json)."""
    checkpoint_every: int = param(2000, within="[1, inf)")
    """Environment steps between checkpoints."""
    log_every: int = param(250, within="[1, inf)")
    """Environment steps between TensorBoard scalar logs."""
    image_every: int = 10_000
    """Environment steps between image logs (reconstructions, imagined rollouts); 0: none."""
    image_size: int = 64
    """Atari: frame side after resizing."""
    noop_max: int = 0
    """Atari: most no-op actions at a reset (0, as Drama and STORM: no no-op starts)."""
    max_episode_frames: int = 108_000
    """Atari: frame cap of an episode (27k agent steps)."""
    out: Optional[str] = None
    """Output folder (default: runs/<task>-<env>-<time>); reusing it resumes the run."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    progress: bool = True
    """Show a progress bar with ETA."""


def parse_rl_config(argv: List[str], yaml_name: str = "rl.yaml") -> RLConfig:
    """RLConfig from tasks/configs/<yaml_name> (rl.yaml or atari.yaml) and `--key value` args;
    `--game` is another spelling of `--env`."""
    return parse_task_config(RLConfig, argv, CONFIG_DIR / yaml_name, RL_ALIASES)
