"""The RL loop (rlts.tasks.rl.loop): debug runs end to end through the `rlts` command, and a run killed
after a checkpoint resumes to exactly the same weights, optimiser states, replay buffer and
evaluation returns as an uninterrupted one (CartPole and an Atari game), also when killed in the
middle of writing a checkpoint; the TensorBoard scalars RL users look for are written."""
import json
from dataclasses import fields

import pytest
from _compare import assert_same as compare
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rlts.checkpoint import Checkpointer
from rlts.tasks.cli import main
from rlts.tasks.rl import loop as rl
from rlts.tasks.rl.config import RLConfig, parse_rl_config
from rlts.world_models.learner import Learner, LearnerConfig
from rlts.world_models.replay import ReplayFiles, chunk_name

pytestmark = pytest.mark.usefixtures("one_thread")


class Killed(Exception):
    pass


def run(tmp_path, name, argv, yaml="rl.yaml", kill_after_updates=None, monkeypatch=None):
    cfg = parse_rl_config(["--config", "debug", "--out", str(tmp_path / name), *argv], yaml)
    if kill_after_updates is not None:
        original = Learner.update

        def update(self, buffer, **kwargs):
            if self.updates == kill_after_updates:
                raise Killed
            return original(self, buffer, **kwargs)

        monkeypatch.setattr(Learner, "update", update)
        with pytest.raises(Killed):
            rl.train(cfg)
        monkeypatch.setattr(Learner, "update", original)
    return rl.train(cfg)


def final_state(path):
    """last.pt with the replay buffer read back from its chunk files."""
    state = torch.load(path / "checkpoints" / "last.pt", weights_only=True)
    return {**state, "buffer": ReplayFiles(path / "checkpoints" / "replay").read(state["buffer"])}


def replay_files(path):
    return sorted(p.name for p in (path / "checkpoints" / "replay").iterdir())


def scalars(path):
    """{tag: [(step, value), ...]} of a run's TensorBoard events."""
    acc = EventAccumulator(str(path / "tb"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def assert_same(a, b, where="checkpoint"):
    """Equal bit for bit, but for wall-clock time, RNG states and the folder."""
    compare(a, b, where, skip=("rng", "wall", "out"))

def test_cartpole_debug_run_through_the_command(tmp_path, capsys):
    out = tmp_path / "cp"
    assert main(["rl", "--config", "debug", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["finished"] and res["steps"] == 300 and res["eval_episodes"] == 2
    assert res["eval_return"] == pytest.approx(sum(res["eval_returns"]) / 2)
    assert res["world_model_parameters"] > 0 and len(res["curve"]) == 2  # at 150 and the final one
    for f in ("config.yaml", "eval.csv", "eval.md", "eval.png", "checkpoints/last.pt"):
        assert (out / f).is_file(), f
    # one replay chunk per checkpoint (every 100 steps), each step written once
    assert replay_files(out) == [chunk_name(a, a + 100) for a in range(0, 300, 100)]
    logged = scalars(out)
    final = {tag: values[-1] for tag, values in logged.items() if tag.startswith("eval/")}
    assert final["eval/return"] == (300, pytest.approx(res["eval_return"]))
    assert final["eval/return_std"] == (300, pytest.approx(res["eval_std"]))
    assert final["eval/return_min"] == (300, pytest.approx(min(res["eval_returns"])))
    assert final["eval/return_max"] == (300, pytest.approx(max(res["eval_returns"])))
    assert [step for step, _ in logged["perf/updates_per_s"]][-2:] == [250, 300]
    assert all(v > 0 for _, v in logged["perf/updates_per_s"])
    assert not [tag for tag in logged if "human_normalised" in tag]  # CartPole has no human score
    # the same command again: the finished run is reported, not redone
    capsys.readouterr()
    assert main(["rl", "--config", "debug", "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text()) == res
    assert "already holds a finished run of 300 steps" in capsys.readouterr().out


def test_a_longer_rerun_keeps_every_evaluation_and_none_runs_twice(tmp_path, monkeypatch):
    first = run(tmp_path, "a", [])
    assert [p["step"] for p in first["curve"]] == [150, 300]
    # killed after the final evaluation but before results.json: the rerun does not evaluate again
    (tmp_path / "a" / "results.json").unlink()
    monkeypatch.setattr(rl, "evaluate", lambda *a: pytest.fail("evaluated twice"))
    again = run(tmp_path, "a", [])
    assert again["curve"] == first["curve"] and again["eval_returns"] == first["eval_returns"]
    monkeypatch.undo()
    # the same, asked for another number of final episodes: that final point is evaluated again
    (tmp_path / "a" / "results.json").unlink()
    other = run(tmp_path, "a", ["--final_eval_episodes", "3"])
    assert [(p["step"], p["episodes"]) for p in other["curve"]] == [(150, 2), (300, 3)]
    assert len(other["eval_returns"]) == 3
    longer = run(tmp_path, "a", ["--steps", "400"])
    assert [p["step"] for p in longer["curve"]] == [150, 300, 400]
    assert longer["curve"][:2] == other["curve"] and longer["steps"] == 400


@pytest.mark.parametrize("num_envs", [1, 2])
def test_cartpole_resume_after_a_kill_is_bit_for_bit(tmp_path, monkeypatch, num_envs):
    argv = ["--num_envs", str(num_envs)]
    straight = run(tmp_path, "a", argv)
    # killed at step ~260 (30 updates); the rerun resumes from the checkpoint at step 200
    resumed = run(tmp_path, "b", argv, kill_after_updates=30, monkeypatch=monkeypatch)
    assert resumed["eval_returns"] == straight["eval_returns"]
    assert resumed["curve"] == straight["curve"]
    assert_same(final_state(tmp_path / "a"), final_state(tmp_path / "b"))


def test_kills_while_checkpointing_a_wrapped_buffer_resume_exactly(tmp_path, monkeypatch):
    """A ring of 120 steps (the run has 300) checkpointed every 50 steps: each checkpoint appends
    one chunk and drops the chunks overwritten in the ring. Killed after the chunk of step 250 is
    written but before last.pt lists it, the run resumes from step 200; killed after last.pt of
    step 300 is saved but before the chunks it no longer lists are deleted, it resumes from 300.
    Both end as an uninterrupted run does, with only the chunks of the stored steps left."""
    argv = ["--buffer_size", "120", "--checkpoint_every", "50"]
    straight = run(tmp_path, "a", argv)
    out = tmp_path / "b"
    cfg = parse_rl_config(["--config", "debug", "--out", str(out), *argv])
    save, commit = Checkpointer.save, ReplayFiles.commit

    def killed_save(self, step, payload):
        if step == 250:
            raise Killed
        return save(self, step, payload)

    monkeypatch.setattr(Checkpointer, "save", killed_save)
    with pytest.raises(Killed):
        rl.train(cfg)
    monkeypatch.setattr(Checkpointer, "save", save)
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"] == 200
    assert chunk_name(200, 250) in replay_files(out)  # written, not listed by last.pt

    def killed_commit(self, index):
        if index["steps"] == 300:
            raise Killed
        return commit(self, index)

    monkeypatch.setattr(ReplayFiles, "commit", killed_commit)
    with pytest.raises(Killed):
        rl.train(cfg)
    monkeypatch.setattr(ReplayFiles, "commit", commit)
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"] == 300
    assert chunk_name(100, 150) in replay_files(out)  # overwritten in the ring, not yet deleted

    resumed = rl.train(cfg)
    assert resumed["eval_returns"] == straight["eval_returns"] and resumed["curve"] == straight["curve"]
    assert_same(final_state(tmp_path / "a"), final_state(out))
    assert final_state(out)["buffer"]["size"] == 120
    assert replay_files(out) == replay_files(tmp_path / "a") == [chunk_name(a, a + 50) for a in (150, 200, 250)]


def test_atari_train_checkpoint_resume_evaluate(tmp_path, monkeypatch):
    """The CI-sized Atari cycle: a kill at step ~170 (35 updates), a resume from the checkpoint at
    step 150 (the agent acting, 25 updates done) that rebuilds the emulator by replaying the
    episode, and a final state equal to an uninterrupted run's."""
    straight = run(tmp_path, "a", ["--game", "Breakout"], yaml="atari.yaml")
    resumed = run(tmp_path, "b", ["--game", "Breakout"], yaml="atari.yaml", kill_after_updates=35,
                  monkeypatch=monkeypatch)
    assert resumed["eval_returns"] == straight["eval_returns"]
    assert_same(final_state(tmp_path / "a"), final_state(tmp_path / "b"))
    assert "108000" not in resumed["protocol"] and "frame skip 4" in resumed["protocol"]
    # the human-normalised score of Breakout (random 1.7, human 30.5), evaluation and training
    logged = scalars(tmp_path / "a")
    hns = lambda score: (score - 1.7) / (30.5 - 1.7)  # noqa: E731
    assert logged["eval/human_normalised_score"] == [(200, pytest.approx(hns(straight["eval_return"])))]
    returns = [v for _, v in logged["train/episode_return"]]
    assert [v for _, v in logged["train/human_normalised_score"]] == pytest.approx([hns(r) for r in returns])
    for tag in ("eval/return_std", "eval/return_min", "eval/return_max", "perf/updates_per_s"):
        assert tag in logged, tag


@pytest.mark.parametrize("backbone", ["mamba", "aaren", "transformer", "gru"])
def test_every_backbone_trains_in_the_loop(tmp_path, backbone):
    res = run(tmp_path, backbone, ["--world_model.backbone", backbone, "--steps", "250", "--eval_every", "0"])
    assert res["finished"] and res["backbone"] == backbone and res["updates"] == 25
    assert all(isinstance(r, float) for r in res["eval_returns"])


def test_resume_refuses_other_settings(tmp_path):
    rl.train(parse_rl_config(["--config", "debug", "--out", str(tmp_path / "a"), "--steps", "250",
                                 "--random_steps", "200"]))
    cfg = parse_rl_config(["--config", "debug", "--out", str(tmp_path / "a"), "--world_model.d_model", "48"])
    with pytest.raises(ValueError, match="different setup.*world_model"):
        rl.train(cfg)


def test_a_checkpoint_config_without_newer_section_keys_resumes_with_their_defaults(tmp_path):
    """A key an older checkpoint's agent or world_model section lacks counts as its default, so
    the run continues; a different value is still refused."""
    from rlts.config import to_dict

    cfg = parse_rl_config(["--config", "debug"])
    old = json.loads(json.dumps(to_dict(cfg)))
    del old["agent"]["acting"], old["world_model"]["image_norm"], old["train"], old["dataset"]
    rl.check_resumable(old, cfg, tmp_path / "last.pt")
    drama = parse_rl_config(["--config", "debug", "--agent.acting", "drama"])
    with pytest.raises(ValueError, match="different setup.*agent"):
        rl.check_resumable(old, drama, tmp_path / "last.pt")
    # a top-level key it lacks was run with its `missing_as`: an agent collecting its own data
    wm_only = parse_rl_config(["--config", "debug", "--train", "world_model"])
    with pytest.raises(ValueError, match="different setup.*train: 'agent' -> 'world_model'"):
        rl.check_resumable(old, wm_only, tmp_path / "last.pt")


@pytest.mark.parametrize("argv, message", [
    (["atari", "--game", "Pongg", "--config", "debug"], "'Pongg'; did you mean Pong?"),
    (["rl", "--env", "Pendulum-v1", "--config", "debug"], "Discrete action space"),
    (["rl", "--config", "debug", "--batch_length", "500"], "batch_length"),
    (["rl", "--config", "debug", "--sampling", "prioritised"], "sampling"),
])
def test_bad_input_is_one_clear_line(tmp_path, capsys, argv, message):
    assert main([*argv, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_learner_config_is_the_run_config_of_the_learner():
    """Every LearnerConfig key is an RLConfig key of the same meaning; the runner copies them all."""
    cfg = parse_rl_config(["--config", "debug", "--batch_size", "3", "--sampling", "uniform"])
    learner_cfg = rl.learner_config(cfg)
    assert isinstance(learner_cfg, LearnerConfig)
    for f in fields(LearnerConfig):
        assert getattr(learner_cfg, f.name) == getattr(cfg, f.name), f.name
    assert rl.learner_config(RLConfig()) == LearnerConfig()  # the same defaults (Drama's)


def test_bf16_autocast_run_through_the_command(tmp_path, capsys):
    """`rlts rl --autocast bf16`: the learner's option as a run key (in --help, checked, kept
    in the results); a short run trains under it and records it."""
    with pytest.raises(SystemExit):
        main(["rl", "--help"])
    assert "--autocast" in capsys.readouterr().out
    assert parse_rl_config(["--config", "debug", "--autocast", "bf16"]).autocast == "bf16"
    assert main(["rl", "--config", "debug", "--autocast", "fp8", "--out", str(tmp_path / "x")]) == 2
    assert "autocast" in capsys.readouterr().err
    out = tmp_path / "bf16"
    assert main(["rl", "--config", "debug", "--autocast", "bf16", "--steps", "250", "--eval_every", "0",
                 "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["finished"] and res["updates"] == 25 and res["config"]["autocast"] == "bf16"
    assert all(isinstance(r, float) for r in res["eval_returns"])
