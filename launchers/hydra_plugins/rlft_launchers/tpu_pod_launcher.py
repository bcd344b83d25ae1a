"""`hydra/launcher=rlft_tpu_pod`: run each job of a (multi)run on every worker of a TPU VM pod.

A TPU pod is several hosts; torch-xla needs the same program started on all of them at once. For
each job this launcher
  1. packs the code (the source tree rlft runs from) and the job's composed config, and copies both
     to every worker (`gcloud compute tpus tpu-vm scp --worker=all`; the code once per launch),
  2. starts the run on all workers at once (`gcloud compute tpus tpu-vm ssh --worker=all --command`)
     with PJRT_DEVICE=TPU, after the configured setup commands; each worker logs to its own file in
     the remote job directory and worker 0 also prints, so the stream shown here is rank 0's,
  3. brings back worker 0's results (final_metrics.json, metrics.csv, images, ...) into the local
     job directory and returns the run's final `reward_mean` to Hydra (sweepers optimize it).
Jobs run one after another: a pod runs one job at a time.

The remote run is `python -m rlft --config-path <job> --config-name config`: the exact config that
Hydra composed here, so configs from a local --config-dir and a sweeper's choices travel with it.
"""

# No `from __future__ import annotations`: Hydra's plugin scan and OmegaConf need real annotations.
import json
import logging
import shlex
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional  # noqa: UP035 - OmegaConf structured configs

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)

# What is not code: environments, outputs, caches (never shipped to the workers).
EXCLUDED_NAMES = {".git", "outputs", "multirun", "__pycache__", ".pytest_cache", ".ruff_cache", "node_modules"}
EXCLUDED_PREFIXES = (".venv",)
EXCLUDED_SUFFIXES = (".ckpt", ".pyc")
# Worker number on a TPU VM (the metadata server); TPU_WORKER_ID, when set, takes precedence.
WORKER_ID = (
    "${TPU_WORKER_ID:-$(curl -sf -H Metadata-Flavor:Google "
    "http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number || echo 0)}"
)


@dataclass
class TPUPodLauncherConf:
    _target_: str = "hydra_plugins.rlft_launchers.tpu_pod_launcher.TPUPodLauncher"
    tpu_name: str = MISSING  # the TPU VM (pod) name
    zone: str = MISSING  # e.g. us-central2-b
    project: Optional[str] = None  # noqa: UP045 - gcloud's default project when null
    # run on each worker, in the code directory, before every job (e.g. "make install-tpu")
    setup: List[str] = field(default_factory=list)  # noqa: UP006
    python: str = "python3"  # the workers' interpreter (e.g. .venv-xla/bin/python after make install-tpu)
    env: Dict[str, str] = field(default_factory=lambda: {"PJRT_DEVICE": "TPU"})  # noqa: UP006
    remote_dir: str = "rlft"  # on every worker, relative to the home directory: code/ and runs/
    code_dir: Optional[str] = None  # noqa: UP045 - the source tree to ship; null: the one rlft runs from
    # files and directories of worker 0's run directory brought back after each job
    collect: List[str] = field(  # noqa: UP006
        default_factory=lambda: ["final_metrics.json", "metrics.csv", "config.yaml", "images", "worker0.log"]
    )
    gcloud: str = "gcloud"
    gcloud_args: List[str] = field(default_factory=list)  # noqa: UP006 - e.g. ["--internal-ip"]
    module: str = "rlft"


ConfigStore.instance().store(group="hydra/launcher", name="rlft_tpu_pod", node=TPUPodLauncherConf)


def default_code_dir() -> Path:
    """The source tree of the running rlft (an editable install or a checkout)."""
    import rlft

    root = Path(rlft.__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file():
        raise ValueError(
            f"rlft at {root} is not a source checkout; set hydra.launcher.code_dir to one "
            "(or install rlft on the workers with hydra.launcher.setup)"
        )
    return root


def _shipped(info: tarfile.TarInfo) -> Optional[tarfile.TarInfo]:  # noqa: UP045
    parts = Path(info.name).parts
    if any(p in EXCLUDED_NAMES or p.startswith(EXCLUDED_PREFIXES) for p in parts):
        return None
    return None if info.name.endswith(EXCLUDED_SUFFIXES) else info


def pack(directory: Path, archive: Path) -> None:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(directory, arcname=".", filter=_shipped)


class TPUPodLauncher(Launcher):
    def __init__(self, **params) -> None:
        self.params = OmegaConf.structured(TPUPodLauncherConf(**params))
        self.config: Optional[DictConfig] = None  # noqa: UP045
        self.hydra_context: Optional[HydraContext] = None  # noqa: UP045

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context

    # -- gcloud ---------------------------------------------------------------------------------
    def _gcloud(self, verb: str, *args: str, worker: str) -> list[str]:
        p = self.params
        command = [p.gcloud, "compute", "tpus", "tpu-vm", verb, *args, f"--zone={p.zone}", f"--worker={worker}"]
        if p.project:
            command.append(f"--project={p.project}")
        return command + list(p.gcloud_args)

    def _run(self, command: list[str], what: str) -> None:
        result = subprocess.run(command, check=False, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{what} failed (exit {result.returncode}): {' '.join(command)}\n{result.stderr}")

    def _copy_to_workers(self, local: Path, remote: str, what: str) -> None:
        self._run(self._gcloud("scp", str(local), f"{self.params.tpu_name}:{remote}", worker="all"), what)

    def _ssh(self, command: str, worker: str = "all") -> list[str]:
        return self._gcloud("ssh", self.params.tpu_name, f"--command={command}", worker=worker)

    # -- one launch: ship the code once, then the jobs one by one -------------------------------
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        p = self.params
        code = Path(p.code_dir).expanduser() if p.code_dir else default_code_dir()
        with tempfile.TemporaryDirectory() as scratch:
            archive = Path(scratch) / "code.tar.gz"
            pack(code, archive)
            self._run(self._ssh(f"mkdir -p {p.remote_dir}/code"), "creating the remote directory")
            self._copy_to_workers(archive, f"{p.remote_dir}/code.tar.gz", "copying the code")
            self._run(
                self._ssh(f"cd {p.remote_dir} && tar -xzf code.tar.gz -C code && rm code.tar.gz"), "unpacking the code"
            )
            log.info("code from %s is on every worker of %s (%s/code)", code, p.tpu_name, p.remote_dir)
            return [
                self._launch_job(list(overrides), initial_job_idx + i, Path(scratch))
                for i, overrides in enumerate(job_overrides)
            ]

    def _job_config(self, overrides: list[str], index: int) -> DictConfig:
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(sweep_config):
            sweep_config.hydra.job.num = index
            sweep_config.hydra.job.id = str(index)
        return sweep_config

    def _launch_job(self, overrides: list[str], index: int, scratch: Path) -> JobReturn:
        p = self.params
        sweep_config = self._job_config(overrides, index)
        local_dir = Path(str(sweep_config.hydra.sweep.dir)) / str(sweep_config.hydra.sweep.subdir)
        local_dir.mkdir(parents=True, exist_ok=True)
        job_name = f"{Path(str(sweep_config.hydra.sweep.dir)).name}_{index}"
        remote_job = f"{p.remote_dir}/runs/{job_name}"
        result = JobReturn(overrides=overrides, working_dir=str(local_dir), task_name=p.module)

        # the job's composed config (without the hydra node: the remote run is a plain single run)
        config = OmegaConf.masked_copy(sweep_config, [k for k in sweep_config if k != "hydra"])
        config_file = scratch / f"{job_name}.yaml"
        OmegaConf.save(config, config_file)
        OmegaConf.save(config, local_dir / "launched_config.yaml")
        self._run(self._ssh(f"mkdir -p {remote_job}/launch"), "creating the job directory")
        self._copy_to_workers(config_file, f"{remote_job}/launch/config.yaml", "copying the job's config")

        log.info("job #%d (%s) starting on every worker of %s", index, " ".join(overrides), p.tpu_name)
        stream_log = local_dir / "tpu_pod.log"
        with stream_log.open("w") as sink:
            process = subprocess.Popen(
                self._ssh(self._job_script(remote_job)),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for line in process.stdout:  # worker 0's output, as it comes
                sys.stdout.write(line)
                sys.stdout.flush()
                sink.write(line)
            code = process.wait()

        collected = self._collect(remote_job, local_dir, scratch / f"{job_name}.tar.gz")
        metrics_file = local_dir / "final_metrics.json"
        if code != 0 or not metrics_file.is_file():
            result.status = JobStatus.FAILED
            result._return_value = RuntimeError(
                f"job #{index} failed on {p.tpu_name} (exit {code}); see {stream_log}"
                + ("" if collected else f" and the worker logs in {remote_job} on the workers")
            )
        else:
            result.status = JobStatus.COMPLETED
            result._return_value = json.loads(metrics_file.read_text()).get("reward_mean")
        return result

    def _job_script(self, remote_job: str) -> str:
        """The shell command every worker runs: setup, then the job; worker 0 also prints its output."""
        p = self.params
        env = " ".join(f"{key}={shlex.quote(str(value))}" for key, value in p.env.items())
        run = (
            f'env {env} {p.python} -m {p.module} --config-path "$JOB/launch" --config-name config hydra.run.dir="$JOB"'
        )
        setup = "".join(f"{command} && " for command in p.setup)
        return (
            f"set -o pipefail; JOB=$(mkdir -p {remote_job} && cd {remote_job} && pwd); WORKER={WORKER_ID}; "
            f"cd {p.remote_dir}/code && {setup}"
            f'if [ "$WORKER" = 0 ]; then {run} 2>&1 | tee "$JOB/worker0.log"; '
            f'else {run} > "$JOB/worker$WORKER.log" 2>&1; fi'
        )

    def _collect(self, remote_job: str, local_dir: Path, archive: Path) -> bool:
        """Bring worker 0's results home in one archive; False if nothing could be fetched."""
        items = " ".join(shlex.quote(item) for item in self.params.collect)
        pack_results = (
            f"cd {remote_job} && tar -czf ../{remote_job.rsplit('/', 1)[-1]}.tar.gz $(ls -d {items} 2>/dev/null)"
        )
        try:
            self._run(self._ssh(pack_results, worker="0"), "packing the results")
            fetch = self._gcloud("scp", f"{self.params.tpu_name}:{remote_job}.tar.gz", str(archive), worker="0")
            self._run(fetch, "fetching the results")
        except RuntimeError as error:
            log.warning("%s", error)
            return False
        with tarfile.open(archive) as tar:
            tar.extractall(local_dir, filter="data")
        return True
