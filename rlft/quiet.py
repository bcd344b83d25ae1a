"""Third-party messages that every rlft run would print and that say nothing about the run,
silenced one at a time: each by its logger (or warning category) and its message, never a whole
logger or category, so that anything else those libraries report is still seen.

`install_log_filters` runs when rlft is imported (every entry point, and Lightning's child ranks,
which import rlft again); `quiet_known_warnings` at the start of a run. pyproject.toml's pytest
filterwarnings list ignores the same warnings for the test suite (tests/test_quiet.py checks that
the two lists agree), and otherwise turns any warning raised from rlft's code into an error.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

# (message regex, category, why): warnings that every run raises (the last two: every multi-process
# run), whatever its settings.
KNOWN_WARNINGS: list[tuple[str, type[Warning], str]] = [
    (
        r"Found \d+ module\(s\) in eval mode at the start of training",
        UserWarning,  # Lightning's PossibleUserWarning
        "the frozen VAE, text encoder and reference UNet stay in eval mode on purpose",
    ),
    (
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        FutureWarning,
        "Lightning 2.6's own pytree helper on torch 2.13; nothing rlft calls",
    ),
    (
        r"torch\.distributed\.nn\.functional\.all_gather is deprecated",
        FutureWarning,
        "every multi-process run: Lightning's LightningModule.all_gather still calls it (torch 2.13)",
    ),
    (
        r"It is recommended to use `self\.log\(.*, sync_dist=True\)` when logging on epoch level in distributed",
        UserWarning,  # Lightning's PossibleUserWarning
        "every multi-process run: rlft logs metrics it has already averaged over the ranks (RLModule.mean_over_ranks)",
    ),
]

# (logger, message regex, why): log records that every run writes.
KNOWN_LOG_RECORDS: list[tuple[str, str, str]] = [
    (
        "lightning.pytorch.utilities.rank_zero",
        r"💡 Tip: .*\[lit(logger|models)\]",
        "Lightning advertises its cloud logger and model registry whenever a Trainer is built",
    ),
    (
        "transformers.utils.import_utils",
        r"`\w+ImageProcessor` requires torchvision \(not installed\); falling back to `\w+ImageProcessorPil`",
        "diffusers imports CLIP's and SigLIP's image processors; rlft, installed without torchvision, "
        + "preprocesses images with torch ops (docs/environment.md)",
    ),
    (
        "diffusers.models.modeling_utils",
        r"There are modules in \w+ that should be kept in float32: \[\]\.",
        "diffusers 0.42 says so on every `model.to(dtype)`, even when the list of such modules is empty",
    ),
    (
        "diffusers.pipelines.pipeline_utils",
        r"self\.(text_encoder_3|tokenizer_3)=None of type <class 'NoneType'> cannot be saved",
        "an SD3 pipeline without T5 (model=tiny_sd3, or sd3_5_medium with t5=false) is saved without it on purpose",
    ),
]


class _DropMessage(logging.Filter):
    """Drops the records whose message matches `pattern`."""

    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def install_log_filters() -> None:
    """Filter the known records at their loggers (before any handler, so on every handler they
    would reach: Lightning's own console handler and Hydra's). Idempotent."""
    for name, pattern, _ in KNOWN_LOG_RECORDS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessage) and f.pattern.pattern == pattern for f in logger.filters):
            logger.addFilter(_DropMessage(pattern))


def quiet_known_warnings() -> None:
    """Ignore the known warnings (in this process's warning filters, from now on)."""
    for pattern, category, _ in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=f".*{pattern}", category=category)


@contextmanager
def quiet_resume_warnings(resumed: bool) -> Iterator[None]:
    """Around a resumed run's fit, Lightning's warning that its checkpoint directory is not empty:
    it holds the run's own checkpoints, kept on purpose. A fresh run in a used directory still gets it."""
    with warnings.catch_warnings():
        if resumed:
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty", category=UserWarning)
        yield


def one_console_line_per_record() -> None:
    """Under `python -m rlft` (Hydra has put its console and log-file handlers on the root logger):
    drop the console handler that `import lightning` adds to its "lightning" logger, which would
    print every Lightning line a second time ("INFO: GPU available ..." above Hydra's copy). The
    lines still reach Hydra's console and the run's log file."""
    if logging.getLogger().handlers:
        lightning = logging.getLogger("lightning")
        for handler in list(lightning.handlers):
            if type(handler) is logging.StreamHandler:
                lightning.removeHandler(handler)


def no_library_progress_bars() -> None:
    """transformers' "Loading weights" and diffusers' "Writing model shards" bars, drawn for every
    component loaded or saved (a bar for each of a model's parts, in seconds): rlft's own progress
    bars and log lines say where a run is."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
