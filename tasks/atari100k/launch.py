"""Where the jobs of `rlts atari100k run` run. A job is one command line, built once by run.py
(`python -m rlts.tasks.cli atari ... --out OUT/<Game>/seed<k>`); a launcher only decides where and
when it runs. Wherever a job is started again, it resumes from the checkpoint in its folder.

    local  processes on this machine: `--jobs` at a time on the CPU, or `--jobs_per_gpu` on each
           GPU of `--gpus` (every visible one by default); each job sees only its own GPU (its
           CUDA_VISIBLE_DEVICES), and the CPU cores are shared out equally as threads
    slurm  one Slurm job per job, submitted through submitit as one job array; a job preempted or
           at its time limit is requeued through submitit's checkpoint protocol
           (ClusterJob.checkpoint) and resumes from its checkpoint
    ray    one Ray task per job on a Ray cluster (`--ray.address`, or a Ray started here), holding
           1/jobs_per_gpu of a GPU where the cluster has GPUs; a task whose worker or node died is
           retried (`--ray.retries`) and resumes from its checkpoint

submitit and Ray are optional: pip install 'rlts[slurm]' or 'rlts[ray]'. Every launcher returns
the names of the jobs that failed.
"""
from __future__ import annotations

import importlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from rlts.config import param

LAUNCHERS = ("local", "slurm", "ray")

EXTRAS = {"slurm": ("submitit", "submitit"), "ray": ("ray", "Ray")}
"""launcher: (the module it needs, its name in messages); the extra of rlts that installs it has
the launcher's name."""


@dataclass
class SlurmConfig:
    """Settings of `--launcher slurm`: one Slurm job per (game, seed), submitted through submitit
    as one job array."""

    partition: Optional[str] = None
    """Slurm partition of the jobs (none: the cluster's default)."""
    time: int = param(1440, within="[1, inf)")
    """Time limit of one Slurm job in minutes. A job still running then is requeued and resumes
    from its last checkpoint (every `checkpoint_every` steps of `rlts atari`), so a limit shorter
    than a whole run only costs the steps since that checkpoint."""
    gpus: int = param(1, within="[0, inf)")
    """GPUs of each job (none with --device cpu)."""
    cpus: int = param(8, within="[1, inf)")
    """CPU cores of each job; also its thread count."""
    array_parallelism: int = param(64, within="[1, inf)")
    """Jobs of the array running at a time."""
    requeues: int = param(20, within="[0, inf)")
    """Times a job that reached its time limit is requeued (a preempted job is requeued however
    often it is preempted)."""


@dataclass
class RayConfig:
    """Settings of `--launcher ray`: one Ray task per (game, seed)."""

    address: Optional[str] = None
    """The Ray cluster to run on: auto (the one `ray start` made on this machine), HOST:6379 or
    ray://HOST:10001; none: start a Ray on this machine for this command. Every node needs rlts
    and the Ray version of this machine."""
    cpus: int = param(1, within="[1, inf)")
    """CPU cores each job holds; also its thread count."""
    retries: int = param(3, within="[0, inf)")
    """Times a job whose worker or node died is started again (it resumes from its checkpoint);
    a job that fails by itself is not."""


def import_engine(launcher: str):
    """The module `--launcher slurm|ray` runs through (submitit, ray); a ValueError that names
    the extra to install when it is missing."""
    module, name = EXTRAS[launcher]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ValueError(f"--launcher {launcher} needs {name}: pip install 'rlts[{launcher}]'") from None


# ----------------------------------------------------------------------------------------------
# A job and its process

@dataclass(frozen=True)
class Job:
    """One (game, seed) job: its name in messages, its folder and its command line."""

    name: str
    folder: Path
    argv: Tuple[str, ...]

    def start(self, env: Dict[str, str]) -> subprocess.Popen:
        """Start the command line with the Python running this process (a cluster node's own
        where it runs on one). What it prints goes nowhere (the job writes its log.txt itself);
        its errors are added to log.txt. It is stopped when this process dies, so a job started
        again elsewhere never runs beside an orphan of itself."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / "log.txt", "a") as log:
            return subprocess.Popen([sys.executable, *self.argv[1:]], stdout=subprocess.DEVNULL, stderr=log,
                                    env=env, preexec_fn=_stop_with_parent())


def _stop_with_parent() -> Optional[Callable[[], None]]:
    """Linux: a function a child runs before its program, asking the kernel to send it SIGTERM
    when the process that started it dies (None elsewhere)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the request
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def thread_env(threads: int, **extra: str) -> Dict[str, str]:
    """This process's environment with the thread count of one job (and `extra`)."""
    return dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), **extra)


def _stop(proc: Optional[subprocess.Popen]) -> None:
    """Stop a job's process (SIGTERM, SIGKILL after 30 s) and wait for it."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        try:  # timed: an untimed wait in a signal handler could wait for the lock of the wait it interrupted
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass


def _report(job: Job, code: Optional[int], seconds: float, failed: List[str], why: str = "") -> None:
    """Print how a job ended; add it to `failed` unless it exited with 0."""
    if code == 0:
        status = "done"
    else:
        failed.append(job.name)
        status = f"FAILED ({why or f'exit {code}'}, see {job.folder / 'log.txt'})"
    print(f"[{status}] {job.name} in {seconds / 60:.1f} min", flush=True)


# ----------------------------------------------------------------------------------------------
# local: a pool of processes, on the CPU or on GPU slots

def visible_gpus() -> List[str]:
    """The GPUs this process sees, as CUDA_VISIBLE_DEVICES entries: an already-set
    CUDA_VISIBLE_DEVICES (its first torch.cuda.device_count() entries), else 0 .. count-1."""
    import torch

    count = torch.cuda.device_count()
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is None:
        return [str(i) for i in range(count)]
    return [d.strip() for d in given.split(",") if d.strip()][:count]


def local_gpus(gpus: Optional[Sequence[int]], device: str) -> List[str]:
    """The GPUs local jobs run on, as CUDA_VISIBLE_DEVICES entries: `--gpus` (indices of the
    visible GPUs), by default every visible GPU; none with --device cpu, or with --device auto
    on a machine without a visible GPU."""
    if device == "cpu":
        if gpus is not None:
            raise ValueError("--gpus runs jobs on GPUs, but --device is cpu; give --device auto or cuda")
        return []
    visible = visible_gpus()
    if gpus is None:
        if device == "cuda" and not visible:
            raise ValueError("--device cuda, but this machine has no visible GPU "
                             f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
        return visible
    if not gpus:
        raise ValueError("--gpus is empty; give GPU indices such as 0,1 (or leave it out: every visible GPU)")
    twice = sorted({g for g in gpus if list(gpus).count(g) > 1})
    if twice:
        raise ValueError(f"--gpus lists GPU {twice[0]} twice; give --jobs_per_gpu N to run N jobs on each GPU")
    if not visible:
        raise ValueError(f"--gpus {','.join(map(str, gpus))}: this machine has no visible GPU")
    bad = [g for g in gpus if g >= len(visible)]
    if bad:
        raise ValueError(f"--gpus {bad[0]}: this machine sees {len(visible)} GPU(s), indices 0 to {len(visible) - 1}")
    return [visible[g] for g in gpus]


def run_local(jobs: Sequence[Job], gpus: Sequence[str], per_place: int) -> List[str]:
    """Run `jobs` as processes on this machine: `per_place` at a time on each GPU of `gpus`
    (CUDA_VISIBLE_DEVICES entries; a job starts on the least busy GPU with a free slot), or, with
    no GPU, `per_place` at a time on the CPU. Each job gets an equal share of the CPU cores as
    threads. The names of the failed jobs."""
    places: List[Optional[str]] = list(gpus) or [None]
    threads = max(1, (os.cpu_count() or 1) // (len(places) * per_place))
    busy = {place: 0 for place in places}
    pending, running, failed = list(jobs), [], []
    while pending or running:
        for item in [r for r in running if r[0].poll() is not None]:
            proc, job, place, start = item
            running.remove(item)
            busy[place] -= 1
            _report(job, proc.returncode, time.time() - start, failed)
        free = [p for p in places if busy[p] < per_place]
        while pending and free:
            place = min(free, key=lambda p: busy[p])
            job = pending.pop(0)
            env = thread_env(threads) if place is None else thread_env(threads, CUDA_VISIBLE_DEVICES=place)
            running.append((job.start(env), job, place, time.time()))
            busy[place] += 1
            free = [p for p in places if busy[p] < per_place]
            print(f"[start] {job.name}" + (f" on GPU {place}" if place is not None else ""), flush=True)
        if running:
            time.sleep(0.5)
    return failed


# ----------------------------------------------------------------------------------------------
# slurm (submitit) and ray: a job as a callable a cluster runs

class ClusterJob:
    """A job as a cluster engine runs it: calling it runs the job's process on the node it was
    placed on, with `threads` threads, and returns (exit code, seconds). submitit's checkpoint
    protocol: on a preemption or time-limit signal, `checkpoint` stops the process (its last
    checkpoint is on disk) and hands submitit this job again, which Slurm requeues; the requeued
    job resumes from that checkpoint."""

    def __init__(self, job: Job, threads: int):
        self.job, self.threads = job, threads
        self._proc: Optional[subprocess.Popen] = None

    def __call__(self) -> Tuple[int, float]:
        start = time.time()
        self._proc = self.job.start(thread_env(self.threads))
        try:
            while self._proc.poll() is None:  # polled, not waited for: a signal's handler may stop it
                time.sleep(0.5)
            return self._proc.returncode, time.time() - start
        finally:
            _stop(self._proc)  # when this process is stopped (a signal's exception), so is the job

    def checkpoint(self, *args, **kwargs):
        from submitit.helpers import DelayedSubmission

        _stop(self._proc)
        return DelayedSubmission(ClusterJob(self.job, self.threads))

    def __getstate__(self) -> dict:
        return {"job": self.job, "threads": self.threads, "_proc": None}


def slurm_executor(folder: Path, cfg: SlurmConfig, gpus: int, cluster: str = "slurm"):
    """The submitit executor of `--launcher slurm` (logs and submissions in `folder`); `cluster`
    local runs the same submissions as local processes (submitit's LocalExecutor)."""
    submitit = import_engine("slurm")
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise ValueError("--launcher slurm submits with Slurm's sbatch, which is not on this machine's PATH; "
                         "run the command on a Slurm login node")
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster, slurm_max_num_timeout=cfg.requeues)
    params = dict(name="atari100k", timeout_min=cfg.time, nodes=1, tasks_per_node=1, cpus_per_task=cfg.cpus,
                  gpus_per_node=gpus, slurm_array_parallelism=cfg.array_parallelism)
    if cfg.partition:
        params["slurm_partition"] = cfg.partition
    executor.update_parameters(**params)
    return executor


def run_slurm(jobs: Sequence[Job], cfg: SlurmConfig, folder: Path, gpus: int) -> List[str]:
    """Submit `jobs` as one Slurm job array (each `gpus` GPUs, `cfg.cpus` cores) and wait for
    them; submitit's files and the Slurm logs go to `folder`. The names of the failed jobs."""
    submitit = import_engine("slurm")
    executor = slurm_executor(folder, cfg, gpus)
    with executor.batch():
        handles = [executor.submit(ClusterJob(job, cfg.cpus)) for job in jobs]
    print(f"[submitted] {len(handles)} Slurm job(s) ({handles[0].job_id.split('_')[0]}"
          f"{'_*' if '_' in handles[0].job_id else ''}); Slurm logs in {folder}", flush=True)
    job_of = {id(h): job for h, job in zip(handles, jobs)}
    failed: List[str] = []
    try:
        for handle in submitit.helpers.as_completed(handles, poll_frequency=2):
            job = job_of[id(handle)]
            try:
                code, seconds = handle.result()
                _report(job, code, seconds, failed)
            except Exception as e:  # the Slurm job itself failed (node failure, too many requeues, cancelled)
                why = " ".join(str(e).split())[:200] or type(e).__name__
                _report(job, None, 0.0, failed, f"Slurm job {handle.job_id}: {why}")
    except KeyboardInterrupt:
        print("rlts atari100k: the submitted Slurm jobs go on (squeue --me lists them); run the same command "
              "again once they have ended to see or resume what is left", file=sys.stderr)
        raise
    return failed


def _ray_run(job: ClusterJob) -> Tuple[int, float]:
    """The Ray task of one job."""
    return job()


def run_ray(jobs: Sequence[Job], cfg: RayConfig, jobs_per_gpu: int, device: str) -> List[str]:
    """Run `jobs` as Ray tasks (each `cfg.cpus` cores and, where the cluster has GPUs and the
    device is not cpu, 1/jobs_per_gpu of a GPU, which Ray sets as its CUDA_VISIBLE_DEVICES) on the
    Ray cluster this process is connected to, else the one at `cfg.address`, else a Ray started
    here for the run. The names of the failed jobs."""
    ray = import_engine("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(address=cfg.address)
    try:
        has_gpus = device != "cpu" and ray.cluster_resources().get("GPU", 0) > 0
        if device == "cuda" and not has_gpus:
            raise ValueError("--device cuda, but the Ray cluster has no GPU")
        task = ray.remote(_ray_run).options(num_cpus=cfg.cpus, num_gpus=1 / jobs_per_gpu if has_gpus else 0,
                                            max_retries=cfg.retries)
        refs = {task.remote(ClusterJob(job, cfg.cpus)): job for job in jobs}
        print(f"[submitted] {len(refs)} Ray task(s), {cfg.cpus} CPU(s)"
              f"{f' and 1/{jobs_per_gpu} GPU' if has_gpus else ''} each", flush=True)
        failed: List[str] = []
        waiting = list(refs)
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=1)
            for ref in done:
                try:
                    code, seconds = ray.get(ref)
                    _report(refs[ref], code, seconds, failed)
                except ray.exceptions.RayError as e:  # its worker died more than `retries` times
                    why = " ".join(str(e).split())[:200] or type(e).__name__
                    _report(refs[ref], None, 0.0, failed, f"Ray: {why}")
        return failed
    finally:
        if started:
            ray.shutdown()
