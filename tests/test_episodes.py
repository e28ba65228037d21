"""Episode-seeded environments shared by the commands (rlts.tasks.rl.episodes), the seeds they are
reset with (rlts.runtime) and the Atari game-name resolver (rlts.tasks.rl.games): `run_episodes`
against plain per-episode loops, `EpisodeCollector` against a Gymnasium vector env with
per-episode seeds, and its exact rebuild from a state dict."""
import itertools

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlts.runtime import derive_seed, episode_seed
from rlts.tasks.rl.envs import make_env, make_envs
from rlts.tasks.rl.episodes import EpisodeCollector, run_episodes
from rlts.tasks.rl.games import ATARI100K_GAMES, close_games, find_game


def lean(obs: np.ndarray) -> int:
    """A deterministic CartPole policy: push towards the lean (the pole still falls, at various steps)."""
    return int(obs[2] > 0)


# ---------------------------------------------------------------- seeds

def test_derived_seeds_are_pinned():
    """The seeds every command's episodes are reset with: a change would change every result."""
    assert derive_seed(0) == 2968811710
    assert derive_seed(7, 1, 3, 2) == 4293377548
    assert episode_seed(7, 3, 2) == derive_seed(7, 0, 3, 2) == 3984329272


# ---------------------------------------------------------------- run_episodes

def test_one_after_another_matches_a_plain_loop():
    seeds = [derive_seed(0, 1, k) for k in range(4)]
    want_returns, want_lengths = [], []
    env = make_env("CartPole-v1")
    for s in seeds:                                       # the reference: one rollout per seed, run directly
        obs, _ = env.reset(seed=s)
        total, t, done = 0.0, 0, False
        while not done:
            obs, r, term, trunc, _ = env.step(lean(obs))
            total, t, done = total + float(r), t + 1, term or trunc
        want_returns.append(total)
        want_lengths.append(t)
    got = run_episodes([make_env("CartPole-v1")], seeds, lambda obs: [lean(obs[0])])
    assert got.returns == want_returns and got.lengths == want_lengths and got.seeds == seeds
    assert len(set(want_lengths)) > 1 and not any(got.cut)


def test_side_by_side_matches_a_batched_loop_with_a_shrinking_state():
    """A batched policy with a per-episode state (as the Drama agent's recurrent state): the rows
    of finished episodes leave the batch, and the state follows through `keep`."""
    seeds = [derive_seed(0, 1, 5, k) for k in range(5)]

    def act(obs, state):                                  # (B, 4), (B,) -> actions (B,), next state
        return (obs[:, 2] + 0.02 * np.sin(state) > 0).astype(np.int64), state + 1

    envs = [make_env("CartPole-v1") for _ in seeds]       # the batched evaluation loop of `rlts rl`
    obs = np.stack([env.reset(seed=s)[0] for env, s in zip(envs, seeds)])
    returns, alive, state = np.zeros(len(seeds)), np.arange(len(seeds)), np.zeros(len(seeds))
    while len(alive):
        action, state = act(obs, state)
        keep, next_obs = [], []
        for j, k in enumerate(alive):
            o, r, term, trunc, _ = envs[k].step(int(action[j]))
            returns[k] += r
            if not (term or trunc):
                keep.append(j)
                next_obs.append(o)
        if len(keep) < len(alive):
            state, alive = state[keep], alive[keep]
        obs = np.stack(next_obs) if next_obs else obs

    class Batched:
        def start(self, n):
            self.state = np.zeros(n)

        def __call__(self, obs):
            action, self.state = act(obs, self.state)
            return action.tolist()

        def keep(self, rows):
            self.state = self.state[rows]

    policy = Batched()
    got = run_episodes([make_env("CartPole-v1") for _ in seeds], seeds, policy, start=policy.start, keep=policy.keep)
    assert got.returns == returns.tolist() and len(set(got.lengths)) > 1
    # the same episodes one at a time: the same returns (the policy's state is per episode)
    one = run_episodes([make_env("CartPole-v1")], seeds, policy, start=policy.start, keep=policy.keep)
    assert one.returns == got.returns and one.lengths == got.lengths


class PerEpisode:
    """A deterministic batched policy whose actions depend on the episode (its index in the run),
    its step and its frame: the episodes of a run differ even where the env does not depend on the
    reset seed (Atari without no-op starts), as a greedy agent's would through its own state.
    Counts its calls: one per batch step."""

    def __init__(self, n_actions: int):
        self.n_actions, self.next, self.calls = n_actions, 0, 0

    def start(self, n):
        self.ids, self.t = np.arange(self.next, self.next + n), np.zeros(n, np.int64)
        self.next += n

    def keep(self, rows):
        self.ids, self.t = self.ids[rows], self.t[rows]

    def __call__(self, obs):
        self.calls += 1
        pixels = obs.reshape(len(obs), -1).astype(np.int64).sum(1)
        actions = (pixels + 3 * self.ids + self.t // (5 + self.ids)) % self.n_actions
        self.t += 1
        return actions.tolist()


@pytest.mark.parametrize("name,kw", [("CartPole-v1", {}), ("Breakout", {}),
                                     ("Breakout", {"noop_max": 30})])
def test_returns_do_not_depend_on_the_number_of_envs(name, kw):
    """4 episodes one after another, 4 side by side (make_env envs and make_envs' vector env: an
    AtariVector for Breakout without no-op starts), and 3 + 1: the same returns and lengths, one
    policy call per batch step."""
    seeds = [derive_seed(0, 1, 2, k) for k in range(4)]
    n_actions = make_env(name).action_space.n
    runs = {}
    for label, envs in [("1 env", [make_env(name, **kw)]), ("4 envs", [make_env(name, **kw) for _ in range(4)]),
                        ("vector 4", make_envs(name, 4, **kw)), ("vector 3", make_envs(name, 3, **kw))]:
        policy = PerEpisode(n_actions)
        runs[label] = run_episodes(envs, seeds, policy, start=policy.start, keep=policy.keep)
        size, lengths = {"1 env": 1, "4 envs": 4, "vector 4": 4, "vector 3": 3}[label], runs[label].lengths
        assert policy.calls == sum(max(lengths[i:i + size]) for i in range(0, len(lengths), size))
    want = runs["1 env"]
    assert len(set(want.returns)) > 1 or len(set(want.lengths)) > 1     # the episodes differ
    for label, got in runs.items():
        assert (got.returns, got.lengths, got.seeds) == (want.returns, want.lengths, seeds), label


def test_step_budget_cuts_the_running_episode_like_record():
    """`max_steps` with endless seeds: the recording loop of `rlts record --steps`."""
    env = make_env("CartPole-v1")
    env.action_space.seed(3)
    want_actions, want_ends, total, k = [], [], 0, 0
    while total < 60:
        env.reset(seed=derive_seed(0, 3, k))
        while True:
            a = env.action_space.sample()
            _, _, term, trunc, _ = env.step(a)
            want_actions.append(int(a))
            total += 1
            if term or trunc:
                want_ends.append(False)
                break
            if total >= 60:
                want_ends.append(True)
                break
        k += 1

    env = make_env("CartPole-v1")
    env.action_space.seed(3)
    steps = []
    got = run_episodes([env], (derive_seed(0, 3, k) for k in itertools.count()),
                       lambda obs: [env.action_space.sample()], on_step=steps.append, max_steps=60)
    assert [int(s.action) for s in steps] == want_actions and sum(got.lengths) == 60
    assert got.cut == want_ends and got.cut[-1] and steps[-1].cut and not any(s.cut for s in steps[:-1])
    assert [s.episode for s in steps] == list(np.repeat(np.arange(len(got.lengths)), got.lengths))
    assert got.seeds == [derive_seed(0, 3, k) for k in range(len(got.lengths))]


def test_on_step_sees_every_transition_and_start_every_episode():
    starts, steps = [], []
    got = run_episodes([make_env("CartPole-v1")], [1, 2], lambda obs: [lean(obs[0])], start=starts.append,
                       on_step=steps.append)
    assert starts == [1, 1] and len(steps) == sum(got.lengths)
    first = make_env("CartPole-v1").reset(seed=1)[0]
    assert np.array_equal(steps[0].obs, first) and steps[0].episode == 0 and steps[-1].episode == 1
    assert all(np.array_equal(a.next_obs, b.obs) for a, b in zip(steps, steps[1:]) if a.episode == b.episode)
    assert steps[-1].terminated or steps[-1].truncated


# ---------------------------------------------------------------- EpisodeCollector

def test_collector_matches_a_vector_env_with_episode_seeds():
    """Two CartPole envs stepped together: the same observations, rewards and flags as a
    Gymnasium SyncVectorEnv whose finished sub-envs are reset with their next episode's seed."""
    seed, n, rng = 5, 2, np.random.default_rng(0)
    vec = gym.vector.SyncVectorEnv([lambda: make_env("CartPole-v1") for _ in range(n)],
                                   autoreset_mode=gym.vector.AutoresetMode.DISABLED)
    obs, _ = vec.reset(seed=[episode_seed(seed, i, 0) for i in range(n)])
    episode = [0] * n
    collector = EpisodeCollector("CartPole-v1", n, seed)
    collector.start()
    assert np.array_equal(collector.obs, obs)
    finished = 0
    for _ in range(120):
        actions = rng.integers(2, size=n)
        nxt, reward, term, trunc, _ = vec.step(actions)
        t = collector.step(actions)
        assert np.array_equal(t.obs, obs) and np.array_equal(t.next_obs, nxt)
        assert np.array_equal(t.reward, reward) and np.array_equal(t.terminated, term)
        assert np.array_equal(t.truncated, trunc) and not t.life_loss.any()
        done = term | trunc
        if done.any():
            for i in np.flatnonzero(done):
                episode[i] += 1
            reset, _ = vec.reset(seed=[episode_seed(seed, i, episode[i]) if done[i] else None for i in range(n)],
                                 options={"reset_mask": done})
            nxt = np.where(done[:, None], reset, nxt)
        assert [i for i, *_ in t.finished] == list(np.flatnonzero(done))
        finished += len(t.finished)
        obs = nxt
        assert np.array_equal(collector.obs, obs) and collector.episode == episode
    assert finished >= 4


@pytest.mark.parametrize("name, num_envs", [("CartPole-v1", 2), ("Pong", 2), ("Pendulum-v1", 1)])
def test_collector_rebuilds_from_its_state_dict(name, num_envs):
    """A fresh collector loaded with another's state: the same observations, and every later
    step the same (discrete and continuous actions, Atari included)."""
    env = make_env(name)
    rng = np.random.default_rng(1)

    def actions():
        if isinstance(env.action_space, gym.spaces.Discrete):
            return rng.integers(env.action_space.n, size=num_envs)
        return [rng.uniform(-1, 1, env.action_space.shape).astype(np.float32) for _ in range(num_envs)]

    a = EpisodeCollector(name, num_envs, 3)
    a.start()
    for _ in range(30 if name == "Pong" else 230):       # Pendulum: past its 200-step episode
        a.step(actions())
    state = a.state_dict()
    assert [len(x) for x in state["actions"]] == a.ep_length and state["obs"].shape[0] == num_envs
    b = EpisodeCollector(name, num_envs, 3)
    b.load_state_dict(state)
    assert np.array_equal(a.obs, b.obs) and a.episode == b.episode and a.ep_return == b.ep_return
    for _ in range(10):
        act = actions()
        x, y = a.step(act), b.step(act)
        assert np.array_equal(x.next_obs, y.next_obs) and np.array_equal(x.reward, y.reward)
        assert x.finished == y.finished
    bad = {**a.state_dict(), "obs": torch.as_tensor(a.obs) + 1}
    with pytest.raises(ValueError, match="cannot resume exactly"):
        EpisodeCollector(name, num_envs, 3).load_state_dict(bad)


# ---------------------------------------------------------------- game names

@pytest.mark.parametrize("name, game", [
    ("Pong", "Pong"), ("pong", "Pong"), ("PONG", "Pong"), (" pong ", "Pong"),           # `atari100k run --games`
    ("ms_pacman", "MsPacman"), ("MsPacman", "MsPacman"), ("ALE/Pong-v5", "Pong"),       # make_env
    ("PongNoFrameskip-v4", "Pong"), ("BreakoutDeterministic-v4", "Breakout"),           # the report
    ("ALE/MsPacman-v5", "MsPacman"), ("up_n_down", "UpNDown"), ("ms-pacman", "MsPacman"),
])
def test_find_game_accepts_every_spelling(name, game):
    assert find_game(name, ATARI100K_GAMES) == game


def test_find_game_refuses_other_names():
    for name in ("Pongg", "CartPole-v1", "", "Tennis", "ALE/"):
        assert find_game(name, ATARI100K_GAMES) is None, name
    assert close_games("Pongg", ATARI100K_GAMES)[0] == "Pong"
    assert close_games("ALE/MsPacmn-v5", ATARI100K_GAMES) == ["MsPacman"]
    assert close_games("xyzzy", ATARI100K_GAMES) == []
