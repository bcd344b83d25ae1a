"""`python -m rlft [overrides]`: compose conf/ with Hydra and train."""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rlft.config import CONFIG_DIR
from rlft.errors import RlftError


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from rlft.train import train  # heavy imports after Hydra has parsed the command line

    try:
        metrics = train(cfg, HydraConfig.get().runtime.output_dir)
    except RlftError as error:  # bad input or a failed service: one line that names the fix
        print(f"rlft: error: {error}", file=sys.stderr)
        sys.exit(2)
    except MisconfigurationException as error:  # Lightning cannot run the hardware/strategy asked for
        print(f"rlft: error: {error} Check the hardware group (hardware=cpu runs on any machine).", file=sys.stderr)
        sys.exit(2)
    # Returned to Hydra's sweepers (e.g. optuna) as the job's objective.
    return metrics.get("reward_mean")


if __name__ == "__main__":
    main()
