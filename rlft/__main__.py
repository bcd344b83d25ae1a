"""`python -m rlft [overrides]`: compose conf/ with Hydra and train."""

from __future__ import annotations

import gc
import logging
import os
import shlex
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from rlft.config import CONFIG_DIR
from rlft.errors import RlftError, exit_with


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from rlft.preemption import Preempted
    from rlft.quiet import one_console_line_per_record
    from rlft.resume import RunFinished
    from rlft.train import train  # heavy imports after Hydra has parsed the command line

    one_console_line_per_record()  # (Lightning, just imported, added a console handler of its own)

    try:
        metrics = train(cfg, HydraConfig.get().runtime.output_dir)
    except RunFinished as finished:  # resume=auto on a finished run (a requeue after the end): not an error
        print(f"rlft: {finished}", file=sys.stderr)
        return None
    except Preempted as stop:
        if stop.rank == 0:
            # (on a line of its own: a progress bar may have been cut short mid-line)
            print(f"\nrlft: {preemption_notice(stop)}", file=sys.stderr, flush=True)
        exit_now(143)  # 128 + SIGTERM, as if the signal had ended the process
    except RlftError as error:  # bad input or a failed service: one line that names the fix
        exit_with(error)  # (HYDRA_FULL_ERROR=1: the traceback instead)
    except MisconfigurationException as error:  # a Lightning setting rlft did not check itself
        exit_with(error)
    if HydraConfig.get().mode == RunMode.RUN:
        # The run is over and the process ends next: keep the interpreter's last garbage collection
        # from walking every object of the libraries loaded (1.5-5 s measured on 2 cores). Not in a
        # multirun, whose later jobs run in this process and must be able to free this one's.
        gc.freeze()
    # Returned to Hydra's sweepers (e.g. optuna) as the job's objective.
    return metrics.get("reward_mean")


def exit_now(code: int) -> None:
    """Exit within the preemption's grace period. The interpreter's own shutdown spends seconds
    collecting the garbage of the libraries loaded (measured: 4.8 s on 2 busy cores); nothing left is
    worth that once Lightning has torn the run down and finalized its loggers, except a wandb run,
    which is finished first so that its last epoch's data is sent."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def preemption_notice(stop) -> str:
    """One line: what was kept, and the command that continues the run."""
    overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith(("resume=", "hydra.run.dir="))]
    command = " ".join(["python -m rlft", *map(shlex.quote, overrides), f"hydra.run.dir={stop.run_dir}", "resume=auto"])
    if stop.checkpoint is None:
        return f"{stop}: no epoch had finished, nothing was kept; rerun the same command to start again"
    return f"{stop}: kept the checkpoint of epoch {stop.epoch - 1}, the last finished ({stop.checkpoint}); resume with: {command}"


# Keys that moved, with where they went: Hydra's own message for a key that is not there says only that.
MOVED_KEYS = {"sample.eta": "sample.kernel.eta (the kernel and its parameters: conf/kernel/, e.g. kernel=ddim)"}


def check_moved_keys(arguments: list[str]) -> None:
    """One line for an override of a key that moved (e.g. sample.eta=0.5 -> sample.kernel.eta=0.5)."""
    from rlft.errors import ConfigError

    for argument in arguments:
        key, _, value = argument.lstrip("+~").partition("=")
        if key in MOVED_KEYS:
            raise ConfigError(f"{argument}: {key} is now {MOVED_KEYS[key]}: give {MOVED_KEYS[key].split()[0]}={value}")


def cli() -> None:
    """`python -m rlft` and the `rlft` command."""
    try:
        check_moved_keys(sys.argv[1:])
    except RlftError as error:
        exit_with(error)
    main()


if __name__ == "__main__":
    cli()
