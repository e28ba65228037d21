"""`rlts play`: a trained agent plays greedy episodes, on screen as a video, beside its world
model's dream.

    rlts play --run runs/cartpole --episodes 3 --video cartpole.mp4
    rlts play --run runs/pong --video pong.mp4 --dream        # real frames | the world model's
    rlts play --run runs/offline-hopper --model aaren --target_return 3000 --video hopper.mp4

The run is the folder of a finished `rlts rl` or `rlts atari` run (the Drama agent of its
checkpoints/last.pt, loaded with weights_only=True) or of `rlts offline` (a DecisionModel of
its results, conditioned on `--target_return`, default the run's). Episode k is reset with the
seed derive_seed(seed, 7, k) and played greedily in the run's environment, made with the run's
settings; each return and their mean are printed.

`--video FILE.mp4` (or .gif): every frame with the running score: the agent's observation for
Atari (upscaled 4x), the environment's `rgb_array` render for the Gymnasium tasks. MP4 is
written by imageio through the ffmpeg binary that the imageio-ffmpeg package ships; where that
cannot run, a GIF is written instead (same name, .gif) and said so. The file is written to a
temporary name and moved into place, and an existing file is never overwritten.

`--dream` (world-model runs): the world model's open-loop prediction of each episode's first
`context + dream_steps` steps (`WorldModel.open_loop`: it reads `context` real observations,
then only the actions the agent took; DreamerV3's "openl" videos), with the predicted reward and
continuation. Image observations: the decoded frames beside the real ones in the video
(`rlts.world_models.learner.open_loop_frames`, which also draws TensorBoard's wm/open_loop
during training). Vector observations: a plot of every real and imagined observation component
over time, FILE.dream.png.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

import gymnasium as gym
import numpy as np
import torch

from rlts.config import apply_dict, param
from rlts.runtime import derive_seed, select_device
from rlts.tasks.runner import Command
from rlts.tasks.rl.envs import is_atari, make_env
from rlts.tasks.rl.episodes import run_episodes
from rlts.tasks.rl.record import AgentPolicy, load_run

VIDEO_SUFFIXES = (".mp4", ".gif")
ATARI_SCALE = 4
"""Atari observations (64 x 64) are shown this many times larger."""


@dataclass
class PlayConfig:
    """Settings of `rlts play`."""

    run: str = ""
    """The folder of a finished `rlts rl`, `rlts atari` or `rlts offline` run."""
    episodes: int = param(1, within="[1, inf)")
    """Greedy episodes to play."""
    video: Optional[str] = None
    """Write the episodes as a video: FILE.mp4 (ffmpeg) or FILE.gif; never over an existing file."""
    seed: int = 0
    """Episode k is reset with derive_seed(seed, 7, k)."""
    dream: bool = False
    """World-model runs: also show the world model's open-loop prediction of each episode's start
    (needs --video)."""
    context: int = param(8, within="[1, inf)")
    """--dream: real observations the world model reads before it predicts from the actions alone."""
    dream_steps: int = param(48, within="[1, inf)")
    """--dream: steps predicted after the context."""
    model: Optional[str] = None
    """`rlts offline` runs: which model plays (default: the first of the run's results)."""
    target_return: Optional[float] = None
    """`rlts offline` runs: the return the DecisionModel is conditioned on (default: the run's)."""
    fps: int = param(15, within="[1, inf)")
    """Frames per second of the video."""
    device: str = "cpu"
    """cpu, cuda or cuda:N."""


# ----------------------------------------------------------------------------- the players


@dataclass
class Player:
    """What plays: the environment's name and settings, a greedy policy for run_episodes
    (`act`, `start`, `observe`), and, for world-model runs, the world model."""

    env: str
    env_kwargs: dict
    act: Callable
    start: Callable[[int], None]
    observe: Optional[Callable] = None
    world_model: Optional[torch.nn.Module] = None
    description: str = ""


def _results(run: Path) -> dict:
    path = run / "results.json"
    if not path.is_file():
        raise ValueError(f"--run {run} is not a finished run of `rlts rl`, `rlts atari` or `rlts offline`: it has no "
                         "results.json")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not readable: {e}") from None


def world_model_player(run: Path, device: torch.device) -> Player:
    state = _results(run)
    if not state.get("finished"):
        raise ValueError(f"--run {run} has not finished training (results.json says so); finish it with the same "
                         "`rlts rl` / `rlts atari` command first")
    policy = AgentPolicy(run, greedy=True, device=device)
    return Player(policy.env, policy.env_kwargs, lambda obs: [policy(obs[0])], lambda n: policy.reset(),
                  world_model=policy.agent.wm, description=policy.description)


def offline_player(run: Path, cfg: PlayConfig, device: torch.device) -> Player:
    from rlts.checkpoint import Checkpointer
    from rlts.tasks.supervised.offline import DecisionPolicy, OfflineConfig, action_size, build_model

    state = _results(run)
    done = list(state.get("results", {}))
    if not done:
        raise ValueError(f"--run {run} holds no finished model yet; finish it with the same `rlts offline` command")
    name = cfg.model or done[0]
    if name not in done:
        raise ValueError(f"--run {run} has no finished model {name!r}; it has {', '.join(done)}")
    try:
        rcfg = apply_dict(OfflineConfig(), {k: v for k, v in state["config"].items() if k not in ("out", "data_sha256")})
        env_id, env_kwargs = state["env"]["id"], dict(state["env"].get("kwargs") or {})
        settings = state["settings"]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{run / 'results.json'} is not the results of an `rlts offline` run ({e})") from None
    env = make_env(env_id, **env_kwargs)
    folders = [run / name] if (run / name / "checkpoints").is_dir() else sorted((run / name).glob("seed*"))
    ckpt = Checkpointer(folders[0] / "checkpoints").load_latest(map_location="cpu", restore_rng=False) if folders else None
    if ckpt is None:
        raise ValueError(f"{run / name} holds no checkpoint of {name}")

    class Shape:  # build_model reads the observation shape from the dataset; the env has it
        obs_shape = tuple(env.observation_space.shape)

    model = build_model(name, rcfg, Shape, action_size(env), settings["return_scale"], settings["max_timestep"])
    env.close()
    try:
        model.load_state_dict(ckpt["best_model"] or ckpt["model"])
    except RuntimeError as e:
        raise ValueError(f"{folders[0]}: the checkpoint does not match the run's settings: {e}") from None
    target = cfg.target_return if cfg.target_return is not None else settings["target_return"]
    policy = DecisionPolicy(model.to(device).eval(), target, device)
    return Player(env_id, env_kwargs, torch.no_grad()(policy), policy.start, observe=policy.observe,
                  description=f"{name} of {run} (target return {target:g})")


def load_player(cfg: PlayConfig, device: torch.device) -> Player:
    run = Path(cfg.run)
    if not cfg.run or not run.is_dir():
        raise ValueError(f"--run {cfg.run or '(none)'} is not a run folder; give the --out folder of `rlts rl`, "
                         "`rlts atari` or `rlts offline`")
    if (run / "checkpoints" / "last.pt").is_file():
        load_run(run)                                   # names a checkpoint of another kind
        return world_model_player(run, device)
    state = _results(run)
    if "env" in state and "settings" in state:
        return offline_player(run, cfg, device)
    raise ValueError(f"--run {run} is not a run of `rlts rl`, `rlts atari` or `rlts offline` (its results.json "
                     "holds no agent)")


# ----------------------------------------------------------------------------- frames


def check_video_path(video: Optional[str]) -> Optional[Path]:
    """The video path if it can be written (a new .mp4 or .gif file in a writable folder), else
    a ValueError; writes nothing."""
    if video is None:
        return None
    path = Path(video)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(f"--video {path}: give a file ending in {' or '.join(VIDEO_SUFFIXES)}")
    if path.exists():
        raise ValueError(f"--video {path} already exists; choose another name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"--video {path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--video {path}: the folder {parent} is not writable")
    return path


def _upscale(frame: np.ndarray, factor: int) -> np.ndarray:
    return frame.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else frame


def caption(frame: np.ndarray, lines: List[str]) -> np.ndarray:
    """frame (H, W, 3) uint8 with a black band of text lines below it."""
    from PIL import Image, ImageDraw

    band = 14 * len(lines) + 4
    image = Image.new("RGB", (frame.shape[1], frame.shape[0] + band))
    image.paste(Image.fromarray(frame), (0, 0))
    draw = ImageDraw.Draw(image)
    for i, text in enumerate(lines):
        draw.text((4, frame.shape[0] + 2 + 14 * i), text, fill=(255, 255, 255))
    return np.asarray(image)


def _even(frame: np.ndarray, multiple: int = 16) -> np.ndarray:
    """Pad (H, W, 3) to multiples of `multiple` (what H.264 encoders want) with black."""
    h, w = frame.shape[:2]
    return np.pad(frame, ((0, -h % multiple), (0, -w % multiple), (0, 0)))


def write_video(path: Path, frames: List[np.ndarray], fps: int) -> Path:
    """Write frames (H, W, 3) uint8 as `path` (.mp4 with ffmpeg, .gif with Pillow), through a
    temporary file; an MP4 that ffmpeg cannot write becomes a GIF beside it. Returns the path
    written."""
    import imageio.v2 as imageio

    frames = [_even(f) for f in frames]
    if path.suffix.lower() == ".mp4":
        try:
            import imageio_ffmpeg  # noqa: F401  (the ffmpeg binary)

            tmp = path.with_name(f".{path.stem}.tmp.mp4")
            with imageio.get_writer(tmp, fps=fps, codec="libx264", macro_block_size=16,
                                    ffmpeg_log_level="error") as writer:
                for f in frames:
                    writer.append_data(f)
            os.replace(tmp, path)
            return path
        except (ImportError, OSError, RuntimeError) as e:
            path.with_name(f".{path.stem}.tmp.mp4").unlink(missing_ok=True)
            gif = path.with_suffix(".gif")
            print(f"rlts play: cannot write MP4 ({e}); writing {gif} instead", file=sys.stderr)
            path = gif
    tmp = path.with_name(f".{path.stem}.tmp.gif")
    imageio.mimsave(tmp, frames, duration=1000.0 / fps, loop=0)
    os.replace(tmp, path)
    return path


def dream_plot(path: Path, episodes: List[dict], context: int) -> None:
    """Vector observations: per component, the real and the imagined values over time (the
    first episode), the context shaded."""
    from matplotlib.figure import Figure

    real, pred = np.stack(episodes[0]["obs"]), episodes[0]["dream"]["recon"]   # (T, D) each
    D = real.shape[1]
    fig = Figure(figsize=(7, 1.6 * D + 0.6))
    axes = fig.subplots(D, 1, sharex=True, squeeze=False)[:, 0]
    t = np.arange(len(pred))
    for d, ax in enumerate(axes):
        ax.plot(t, real[:len(pred), d], color="k", lw=1.2, label="real")
        ax.plot(t, pred[:, d], color="tab:red", lw=1.2, label="world model")
        ax.axvspan(-0.5, context - 0.5, color="0.9", label="context")
        ax.set_ylabel(f"obs[{d}]")
    axes[0].legend(fontsize=8, loc="upper right")
    axes[-1].set_xlabel("step")
    fig.suptitle(f"open-loop prediction: {context} real steps read, then the actions alone", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


# ----------------------------------------------------------------------------- playing


def play(cfg: PlayConfig) -> dict:
    """Play `episodes` greedy episodes; print each return and their mean; write the video and
    the dream if asked. Returns {"returns", "lengths", "video", "dream_plot"}."""
    video = check_video_path(cfg.video)
    if cfg.dream and video is None:
        raise ValueError("--dream needs --video FILE: the dream is drawn beside the frames (or, for vector "
                         "observations, plotted to FILE.dream.png)")
    device = select_device(cfg.device)
    player = load_player(cfg, device)
    if cfg.dream and player.world_model is None:
        raise ValueError(f"--dream needs a world-model run (`rlts rl` / `rlts atari`); {cfg.run} is an `rlts "
                         "offline` run")
    atari = is_atari(player.env)                              # image observations
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")         # pygame renders off screen, without sound
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    os.environ.setdefault("MUJOCO_GL", "egl")                  # MuJoCo renders without a display
    try:
        env = make_env(player.env, **player.env_kwargs, render_mode=None if atari or video is None else "rgb_array")
        if video is not None and not atari:
            env.reset(seed=0)
            if env.render() is None:
                raise ValueError("its render() gave no image")
    except (gym.error.DependencyNotInstalled, ImportError, AttributeError, RuntimeError, ValueError) as e:
        raise ValueError(f"cannot draw {player.env} for the video: {e} (leave out --video to play without one)") \
            from None
    episodes: List[dict] = []

    def start(n: int) -> None:
        player.start(n)
        episodes.append({"obs": [], "actions": [], "rewards": [], "frames": []})
        if video is not None and not atari:
            episodes[-1]["frames"].append(env.render())

    def on_step(step) -> None:
        ep = episodes[-1]
        ep["obs"].append(np.asarray(step.obs))
        ep["actions"].append(step.action)
        ep["rewards"].append(float(step.reward))
        if video is not None and not atari:
            ep["frames"].append(env.render())
        if player.observe is not None:
            player.observe(step)

    seeds = [derive_seed(cfg.seed, 7, k) for k in range(cfg.episodes)]
    print(f"rlts play: {player.description} in {player.env}")
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(derive_seed(cfg.seed, 8))
        result = run_episodes([env], seeds, player.act, start=start, on_step=on_step)
        for k, ep in enumerate(episodes):
            print(f"episode {k + 1}: return {result.returns[k]:g} ({result.lengths[k]} steps, seed {seeds[k]})")
            if cfg.dream:
                ep["dream"] = _dream(player.world_model, ep, cfg, device)
    env.close()
    print(f"mean return {np.mean(result.returns):g} over {len(result.returns)} episode"
          f"{'s' * (len(result.returns) > 1)}")
    out = {"returns": result.returns, "lengths": result.lengths, "video": None, "dream_plot": None}
    if video is not None:
        if cfg.dream and not atari:
            out["dream_plot"] = video.with_suffix(".dream.png")
            dream_plot(out["dream_plot"], episodes, min(cfg.context, len(episodes[0]["obs"])))
        frames = [f for k, ep in enumerate(episodes) for f in _episode_frames(ep, k, atari, cfg)]
        out["video"] = write_video(video, frames, cfg.fps)
        print(f"rlts play: wrote {out['video']} ({len(frames)} frames)"
              + (f" and {out['dream_plot']}" if out["dream_plot"] else ""))
    return out


def _dream(wm, ep: dict, cfg: PlayConfig, device: torch.device) -> dict:
    """The world model's open-loop prediction of the episode's first context + dream_steps steps."""
    n = min(len(ep["actions"]), cfg.context + cfg.dream_steps)
    obs = torch.as_tensor(np.stack(ep["obs"][:n]), device=device).unsqueeze(0)
    action = torch.as_tensor(np.asarray(ep["actions"][:n]), device=device).unsqueeze(0)
    pred = wm.open_loop(obs, action, min(cfg.context, n))
    return {k: v[0].float().cpu().numpy() for k, v in pred.items()}


def _episode_frames(ep: dict, k: int, atari: bool, cfg: PlayConfig):
    """The video frames of one episode: the frame after each step (and the first), the running
    score below; with a dream of image observations, the world model's frame beside the real one."""
    from rlts.world_models.learner import open_loop_frames

    score = np.concatenate([[0.0], np.cumsum(ep["rewards"])])
    real = ep["obs"] + [ep["obs"][-1]] if atari else ep["frames"]
    dream = ep.get("dream")
    stacked = None
    if dream is not None and atari:
        n = len(dream["recon"])
        stacked = open_loop_frames(torch.as_tensor(np.stack(ep["obs"][:n])), torch.as_tensor(dream["recon"])).numpy()
    for t, frame in enumerate(real):
        frame = _upscale(np.asarray(frame, dtype=np.uint8), ATARI_SCALE if atari else 1)
        lines = [f"episode {k + 1}  step {t}  score {score[min(t, len(score) - 1)]:g}"]
        if stacked is not None:
            H = stacked.shape[1] // 2
            if t < len(stacked):
                imagined = (stacked[t, H:] * 255).round().astype(np.uint8)
                what = "context (read)" if t < cfg.context else "imagined"
                lines.append(f"{what}: reward {dream['reward'][t]:+.2f}  continue {dream['cont'][t]:.2f}")
            else:
                imagined = np.zeros_like(stacked[0, H:], dtype=np.uint8)
                lines.append("dream ended")
            frame = np.concatenate([frame, _upscale(imagined, ATARI_SCALE)], axis=1)
        yield caption(frame, lines)


COMMANDS = (Command("play", PlayConfig, None, play, trains=False,
                    help="a trained agent plays greedy episodes; a video of them, and its world model's dream",
                    usage="rlts play --run DIR [--episodes N] [--video FILE.mp4] [--dream] [--seed S]"),)
