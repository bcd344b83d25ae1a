"""`hydra/launcher=rlft_process_group`: every job of a sweep as its own group of processes.

Lightning's DDP inside Hydra's basic multirun launcher starts its extra ranks by re-running the
command line, which re-enters Hydra's multirun in every rank (the known trap). This launcher starts
each job the way torchrun would instead: `processes_per_job` copies of `python -m rlft <the job's
overrides>` with LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT set, which Lightning adopts as
externally launched ranks; all ranks share the job's directory. Jobs run side by side on disjoint
device sets: with `device_pool=[0,...,7]` and 2 processes per job, 4 jobs at a time, each with its
own CUDA_VISIBLE_DEVICES; without a pool (CPU, gloo), `max_parallel_jobs` at a time.

The job's result for sweepers (e.g. Optuna) is the `reward_mean` that rank 0 writes to
`<job dir>/final_metrics.json`.
"""

# No `from __future__ import annotations`: Hydra's plugin scan and OmegaConf need real annotations.
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional  # noqa: UP035 - OmegaConf structured configs

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


@dataclass
class ProcessGroupLauncherConf:
    _target_: str = "hydra_plugins.rlft_launchers.process_group_launcher.ProcessGroupLauncher"
    processes_per_job: int = 2  # DDP ranks of one job (GPUs per job when device_pool is set)
    # GPU ids shared by the jobs; None: CPU processes (gloo). (typing's spelling: OmegaConf reads it.)
    device_pool: Optional[List[int]] = None  # noqa: UP006, UP045
    max_parallel_jobs: int = 1  # without a device pool; with one, len(pool) // processes_per_job
    master_port: int = 29600  # job slot k uses master_port + k
    module: str = "rlft"  # what each rank runs: python -m <module> <overrides>


ConfigStore.instance().store(group="hydra/launcher", name="rlft_process_group", node=ProcessGroupLauncherConf)


@dataclass
class _Running:
    index: int
    overrides: list[str]
    directory: Path
    slot: int
    processes: list[subprocess.Popen]


class ProcessGroupLauncher(Launcher):
    def __init__(self, **params) -> None:
        self.params = ProcessGroupLauncherConf(**params)
        self.config: Optional[DictConfig] = None  # noqa: UP045
        self.hydra_context: Optional[HydraContext] = None  # noqa: UP045

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context

    def _slots(self) -> "list[list[int] | None]":
        p = self.params
        if p.device_pool:
            count = len(p.device_pool) // p.processes_per_job
            if count == 0:
                raise ValueError(f"device_pool {p.device_pool} has fewer devices than processes_per_job")
            return [list(p.device_pool[k * p.processes_per_job : (k + 1) * p.processes_per_job]) for k in range(count)]
        return [None] * max(1, p.max_parallel_jobs)

    def _job_directory(self, overrides: list[str], index: int) -> Path:
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(sweep_config):
            sweep_config.hydra.job.num = index
            sweep_config.hydra.job.id = str(index)
        return Path(str(sweep_config.hydra.sweep.dir)) / str(sweep_config.hydra.sweep.subdir)

    def _start(self, index: int, overrides: list, slot: int, devices: "list[int] | None") -> "_Running":
        p = self.params
        directory = self._job_directory(overrides, index)
        directory.mkdir(parents=True, exist_ok=True)
        processes = []
        for rank in range(p.processes_per_job):
            env = {
                **os.environ,
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(p.master_port + slot),
                "WORLD_SIZE": str(p.processes_per_job),
                "NODE_RANK": "0",
                "LOCAL_RANK": str(rank),
            }
            if devices is not None:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, devices))
            command = [
                sys.executable,
                "-m",
                p.module,
                *overrides,
                f"hardware.devices={p.processes_per_job}",
                "hardware.num_nodes=1",
                f"hydra.run.dir={directory}",
                f"hydra.job.num={index}",
                # one copy of the job's Hydra files, written by rank 0
                "hydra.output_subdir=.hydra" if rank == 0 else "hydra.output_subdir=null",
            ]
            log_file = (directory / f"rank{rank}.log").open("w")
            processes.append(subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT))
        log.info("job #%d (%s) started on %s", index, " ".join(overrides), devices or f"CPU slot {slot}")
        return _Running(index, overrides, directory, slot, processes)

    def _finish(self, job: _Running) -> JobReturn:
        codes = [process.wait() for process in job.processes]
        result = JobReturn(overrides=job.overrides, working_dir=str(job.directory), task_name=self.params.module)
        metrics_file = job.directory / "final_metrics.json"
        if any(codes) or not metrics_file.is_file():
            result.status = JobStatus.FAILED
            result._return_value = RuntimeError(
                f"job #{job.index} failed (exit codes {codes}); see {job.directory}/rank*.log"
            )
        else:
            result.status = JobStatus.COMPLETED
            result._return_value = json.loads(metrics_file.read_text()).get("reward_mean")
        return result

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        slots = self._slots()
        free = list(range(len(slots)))
        pending = [(initial_job_idx + i, list(overrides)) for i, overrides in enumerate(job_overrides)]
        running: list[_Running] = []
        results: dict[int, JobReturn] = {}
        while pending or running:
            while pending and free:
                slot = free.pop(0)
                index, overrides = pending.pop(0)
                running.append(self._start(index, overrides, slot, slots[slot]))
            for job in running:
                if any(p.poll() not in (None, 0) for p in job.processes):
                    for process in job.processes:  # a failed rank leaves the others waiting in a collective
                        if process.poll() is None:
                            process.kill()
            for job in [j for j in running if all(p.poll() is not None for p in j.processes)]:
                results[job.index] = self._finish(job)
                running.remove(job)
                free.append(job.slot)
            time.sleep(0.2)
        return [results[i] for i in sorted(results)]
