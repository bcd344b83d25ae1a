"""`python -m rlft [overrides]`: compose conf/ with Hydra and train."""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rlft.config import CONFIG_DIR
from rlft.errors import RlftError, exit_with


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from rlft.train import train  # heavy imports after Hydra has parsed the command line

    try:
        metrics = train(cfg, HydraConfig.get().runtime.output_dir)
    except RlftError as error:  # bad input or a failed service: one line that names the fix
        exit_with(error)  # (HYDRA_FULL_ERROR=1: the traceback instead)
    except MisconfigurationException as error:  # a Lightning setting rlft did not check itself
        exit_with(error)
    # Returned to Hydra's sweepers (e.g. optuna) as the job's objective.
    return metrics.get("reward_mean")


if __name__ == "__main__":
    main()
