"""`python -m rlft [overrides]`: compose conf/ with Hydra and train."""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rlft.config import CONFIG_DIR
from rlft.errors import ConfigError


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from rlft.train import train  # heavy imports after Hydra has parsed the command line

    try:
        metrics = train(cfg, HydraConfig.get().runtime.output_dir)
    except ConfigError as error:  # bad input: one line that names the fix, no traceback
        print(f"rlft: error: {error}", file=sys.stderr)
        sys.exit(2)
    except MisconfigurationException as error:  # Lightning cannot run the hardware/strategy asked for
        print(f"rlft: error: {error} Check the hardware group (hardware=cpu runs on any machine).", file=sys.stderr)
        sys.exit(2)
    # Returned to Hydra's sweepers (e.g. optuna) as the job's objective.
    return metrics.get("reward_mean")


if __name__ == "__main__":
    main()
