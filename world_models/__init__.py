"""The Drama world-model agent (Wang et al. 2024) on rlts.nn backbones.

    world_model.WorldModel     encoder/decoder, 32x32 categorical latents, a SequenceModel of any
                               backbone (mamba2 default), reward/termination heads, imagination
    actor_critic.ActorCritic   actor and two-hot critic trained on imagined rollouts
    replay.ReplayBuffer        uint8 frames per env stream, Drama's DFS sampling
    functions                  symlog two-hot, unimix, straight-through, KL with free bits,
                               lambda-returns, return scale
    optim.LaProp               the world model's optimiser (and the actor-critic's, as Drama)
    learner.Learner            both models, their optimisers and one update of each (LearnerConfig)
    agent.Agent                the world model and the actor acting: one recurrent step per action,
                               or (acting="drama") a prior read from a window of recent frames

The training loop that drives them is tasks/rl/loop.py (`rlts rl`, `rlts atari`).
"""
from rlts.world_models.actor_critic import ActorCritic, ActorCriticConfig
from rlts.world_models.agent import Agent
from rlts.world_models.learner import Learner, LearnerConfig
from rlts.world_models.replay import ReplayBuffer
from rlts.world_models.world_model import WorldModel, WorldModelConfig

__all__ = ["ActorCritic", "ActorCriticConfig", "Agent", "Learner", "LearnerConfig", "ReplayBuffer", "WorldModel",
           "WorldModelConfig"]
