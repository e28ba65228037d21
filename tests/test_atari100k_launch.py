"""Where `rlts atari100k run` runs its jobs (rlts.tasks.atari100k.launch): local jobs on GPU
slots (fake GPUs and a fake job command: the environment each job gets and how many share a GPU
at a time), the checks of the launch options, and two tiny debug jobs run for real through
submitit's local executor and through a local Ray cluster, one of them stopped mid-run (a Slurm
preemption signal; a killed Ray worker) and resumed from its checkpoint, then read by the report."""
import json
import os
import signal
import sys
import threading
import time
from functools import partial
from pathlib import Path

import pytest

import rlts.tasks.atari100k.run as run
from rlts.tasks.atari100k import launch
from rlts.tasks.atari100k.report import collect_runs
from rlts.tasks.cli import main

FAKE_JOB = """import json, os, sys, time
start = time.time()
time.sleep(0.5)
json.dump({"gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "threads": os.environ["OMP_NUM_THREADS"],
           "start": start, "end": time.time()}, open(sys.argv[1], "w"))
"""


def _fake_jobs(monkeypatch, gpus):
    """Jobs that record their environment and when they ran in <folder>/env.json, on a machine
    whose visible GPUs are `gpus`."""
    monkeypatch.setattr(launch, "visible_gpus", lambda: list(gpus))
    monkeypatch.setattr(run, "job_command",
                        lambda game, seed, cfg, folder: [sys.executable, "-c", FAKE_JOB, str(folder / "env.json")])


def _records(out):
    return {f"{p.parent.parent.name} {p.parent.name}": json.loads(p.read_text()) for p in out.glob("*/seed*/env.json")}


def _most_at_once(records):
    """The most jobs of `records` that ran at the same time."""
    edges = sorted([(r["start"], 1) for r in records] + [(r["end"], -1) for r in records])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def test_local_jobs_fill_every_gpu_slot(tmp_path, monkeypatch, capsys):
    _fake_jobs(monkeypatch, ["3", "5"])
    out = tmp_path / "bench"
    argv = ["atari100k", "run", "--games", "Pong,Breakout,Seaquest", "--seeds", "2", "--config", "debug"]
    assert main([*argv, "--jobs_per_gpu", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "6 to run, 2 at a time on each GPU (3,5)" in printed
    records = _records(out)
    assert len(records) == 6
    threads = str(max(1, (os.cpu_count() or 1) // 4))
    assert all(r["threads"] == threads for r in records.values())
    for gpu in ("3", "5"):
        on_gpu = [r for r in records.values() if r["gpu"] == gpu]
        assert on_gpu and _most_at_once(on_gpu) <= 2
        assert printed.count(f"on GPU {gpu}") == len(on_gpu)
    assert {r["gpu"] for r in records.values()} == {"3", "5"}
    assert _most_at_once(list(records.values())) <= 4

    # --gpus picks among the visible GPUs by index: one job at a time on the second
    out = tmp_path / "one"
    assert main(["atari100k", "run", "--games", "Pong,Breakout", "--seeds", "1", "--config", "debug", "--gpus", "1",
                 "--out", str(out)]) == 0
    records = _records(out)
    assert {r["gpu"] for r in records.values()} == {"5"} and _most_at_once(list(records.values())) == 1
    assert all(r["threads"] == str(os.cpu_count() or 1) for r in records.values())


def test_without_gpus_jobs_share_the_cpu(tmp_path, monkeypatch, capsys):
    _fake_jobs(monkeypatch, [])
    out = tmp_path / "bench"
    assert main(["atari100k", "run", "--games", "Pong,Breakout", "--seeds", "1", "--config", "debug",
                 "--jobs", "2", "--out", str(out)]) == 0
    assert "2 to run, 2 at a time ->" in capsys.readouterr().out
    records = _records(out)
    assert [r["gpu"] for r in records.values()] == [os.environ.get("CUDA_VISIBLE_DEVICES")] * 2
    assert all(r["threads"] == str(max(1, (os.cpu_count() or 1) // 2)) for r in records.values())


def test_visible_gpus_honour_cuda_visible_devices(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert launch.visible_gpus() == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "6, 2,9")  # the third is not a device torch found
    assert launch.visible_gpus() == ["6", "2"]
    assert launch.local_gpus([1], "auto") == ["2"] and launch.local_gpus(None, "cuda") == ["6", "2"]
    assert launch.local_gpus(None, "cpu") == []


def test_launch_options_are_checked_before_anything_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(launch, "visible_gpus", lambda: ["0", "1"])
    out = tmp_path / "bench"
    base = ["atari100k", "run", "--games", "Pong", "--seeds", "1", "--config", "debug", "--out", str(out)]
    for extra, message in [
        (["--gpus", "0,0"], "--gpus lists GPU 0 twice; give --jobs_per_gpu N"),
        (["--gpus", "2"], "--gpus 2: this machine sees 2 GPU(s), indices 0 to 1"),
        (["--gpus", "0", "--device", "cpu"], "--gpus runs jobs on GPUs, but --device is cpu"),
        (["--device", "cuda:1"], "--device cuda:1: give auto, cpu or cuda (each job sees only the GPU it is "
                                 "given, as cuda:0); choose the GPU with --gpus 1"),
        (["--gpus", "0", "--launcher", "ray"], "with --launcher ray the cluster gives each job a share of a GPU"),
        (["--launcher", "mpi"], "unknown launcher 'mpi'; use one of local, slurm, ray"),
        (["--jobs_per_gpu", "0"], "jobs_per_gpu must be at least 1, got 0"),
        (["--slurm.time", "0"], "slurm.time must be at least 1, got 0"),
    ]:
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("rlts atari100k run: error: ") and message in err and err.count("\n") == 1, err
    monkeypatch.setattr(launch, "visible_gpus", lambda: [])
    assert main([*base, "--gpus", "0"]) == 2
    assert "--gpus 0: this machine has no visible GPU" in capsys.readouterr().err
    assert main([*base, "--device", "cuda"]) == 2
    assert "--device cuda, but this machine has no visible GPU" in capsys.readouterr().err
    # an engine that is not installed names the extra that installs it
    for launcher, module, message in [("ray", "ray", "--launcher ray needs Ray: pip install 'rlts[ray]'"),
                                      ("slurm", "submitit", "--launcher slurm needs submitit: pip install "
                                                            "'rlts[slurm]'")]:
        monkeypatch.setitem(sys.modules, module, None)  # `import` raises ImportError
        assert main([*base, "--launcher", launcher]) == 2
        assert message in capsys.readouterr().err
    assert not out.exists()


# ----------------------------------------------------------------------------------------------
# Real jobs through the cluster engines

TINY = ["--games", "Pong,Breakout", "--seeds", "1", "--config", "debug", "--device", "cpu", "--steps", "40",
        "--job.random_steps", "20", "--job.updates_per_step", "0.05", "--job.checkpoint_every", "10",
        "--job.max_episode_frames", "100", "--job.image_every", "0", "--job.log_every", "10"]
"""Two debug jobs of a few seconds each, checkpointing every 10 of their 40 steps."""


def _processes(text):
    """{pid: parent pid} of the processes whose command line holds `text`."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text.encode() in (proc / "cmdline").read_bytes():
                found[int(proc.name)] = int((proc / "stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return found


@pytest.fixture
def bench(tmp_path):
    """The benchmark folder; whatever process of the test still runs there at the end is stopped."""
    out = tmp_path / "bench"
    yield out
    for pid in _processes(str(out)):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _run_and_stop_one_job(argv, folder, stop):
    """Run `rlts ARGV` in a thread; once the job in `folder` has written a checkpoint, call
    stop(pid of the job's process, pid of its parent). The command's exit code."""
    result = {}
    thread = threading.Thread(target=lambda: result.update(code=main(argv)), daemon=True)
    thread.start()
    stopped, deadline = False, time.time() + 240
    while thread.is_alive() and time.time() < deadline:
        if not stopped and (folder / "checkpoints" / "last.pt").is_file():
            assert not (folder / "results.json").exists(), "the job ended before it could be stopped"
            found = _processes(str(folder))  # the job's `rlts atari` process
            if len(found) == 1:
                pid, parent = found.popitem()
                stop(pid, parent)
                stopped = True
                while _alive(pid) and time.time() < deadline:  # it does not outlive its stop
                    time.sleep(0.05)
                assert not _alive(pid), "the stopped job's process still runs"
        time.sleep(0.05)
    thread.join(timeout=5)
    assert stopped and not thread.is_alive(), "the run did not end in time"
    return result["code"]


def _alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _check_resumed_and_reported(out, stopped_game):
    log = (out / stopped_game / "seed0" / "log.txt").read_text()
    assert "rlts atari: resumed at step" in log, log[-2000:]
    for game in ("Pong", "Breakout"):
        res = json.loads((out / game / "seed0" / "results.json").read_text())
        assert res["finished"] and res["steps"] == 40 and res["env"] == game
    runs = collect_runs(out)
    assert sorted(runs["game"]) == ["Breakout", "Pong"] and runs["finished"].all()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the jobs' processes in /proc")
def test_slurm_launcher_requeues_a_preempted_job_and_resumes_it(bench, monkeypatch, capsys):
    pytest.importorskip("submitit", reason="the slurm extra is not installed: pip install 'rlts[slurm]'")
    # submitit's local executor runs the same submissions as processes on this machine
    monkeypatch.setattr(launch, "slurm_executor", partial(launch.slurm_executor, cluster="local"))

    def preempt(pid, parent):  # Slurm's signal before a preemption or the time limit, to submitit's process
        os.kill(parent, signal.SIGUSR2)

    argv = ["atari100k", "run", *TINY, "--launcher", "slurm", "--out", str(bench)]
    assert _run_and_stop_one_job(argv, bench / "Pong" / "seed0", preempt) == 0
    printed = capsys.readouterr().out
    assert "as Slurm jobs (0 GPU(s), 8 CPUs each)" in printed and "[submitted] 2 Slurm job(s)" in printed
    assert "[done] Pong seed 0" in printed and "[done] Breakout seed 0" in printed
    _check_resumed_and_reported(bench, "Pong")
    assert any("Requeued job" in p.read_text() for p in (bench / "slurm").glob("*_log.out"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the jobs' processes in /proc")
def test_ray_launcher_retries_a_job_whose_worker_died(bench, tmp_path_factory, monkeypatch, capsys):
    ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install 'rlts[ray]'")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    # Ray's sockets live under its temp folder: a short path keeps them under the 107-byte limit
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(tmp_path_factory.mktemp("ray")))
    try:
        def kill_worker(pid, parent):
            os.kill(parent, signal.SIGKILL)

        argv = ["atari100k", "run", *TINY, "--launcher", "ray", "--out", str(bench)]
        assert _run_and_stop_one_job(argv, bench / "Breakout" / "seed0", kill_worker) == 0
    finally:
        ray.shutdown()
    printed = capsys.readouterr().out
    assert "[submitted] 2 Ray task(s), 1 CPU(s) each" in printed
    assert "[done] Pong seed 0" in printed and "[done] Breakout seed 0" in printed
    _check_resumed_and_reported(bench, "Breakout")
