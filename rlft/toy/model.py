"""model=toy: the text-to-image model that `python -m rlft.pretrain` trains on the toy world."""

from __future__ import annotations

from pathlib import Path

from rlft.errors import ConfigError
from rlft.models import Components, load_pretrained

SHIPPED = Path(__file__).parent / "pipeline"


def load_toy(path: str | None = None) -> Components:
    """The pipeline at `path`, or the one shipped with rlft."""
    directory = Path(path).expanduser() if path else SHIPPED
    if not (directory / "model_index.json").is_file():
        raise ConfigError(
            f"model=toy: no pretrained toy pipeline at {directory}; train one with `python -m rlft.pretrain` "
            "and pass model.path=<its run directory>/pipeline"
        )
    components = load_pretrained(hub_id=str(directory), path=str(directory))
    for module in (components.unet, components.vae, components.text_encoder):
        module.float()  # shipped in float16 to keep it small; rlft decides its own dtypes from here
    return components
