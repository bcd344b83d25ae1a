"""rlft/quiet.py: the known third-party messages are dropped one by one, anything else from the
same loggers still comes through, and the test suite's warning filters agree with the run's."""

from __future__ import annotations

import logging
import os
import warnings

import pytest

from rlft.quiet import (
    KNOWN_LOG_RECORDS,
    KNOWN_WARNINGS,
    install_log_filters,
    quiet_known_warnings,
    quiet_resume_warnings,
)

# One real instance of each known record (the message as the library writes it).
EXAMPLES = {
    "diffusers.pipelines.pipeline_utils": "self.text_encoder_3=None of type <class 'NoneType'> cannot be saved.",
    "lightning.pytorch.utilities.rank_zero": (
        "💡 Tip: For seamless cloud logging and experiment tracking, try installing "
        "[litlogger](https://pypi.org/project/litlogger/) to enable LitLogger, which logs metrics and artifacts "
        "automatically to the Lightning Experiments platform."
    ),
    "transformers.utils.import_utils": (
        "`CLIPImageProcessor` requires torchvision (not installed); falling back to `CLIPImageProcessorPil` for "
        "backward compatibility. Install torchvision to use the default backend, or import `CLIPImageProcessorPil` "
        "directly to silence this warning."
    ),
    "diffusers.models.modeling_utils": (
        "There are modules in AutoencoderKL that should be kept in float32: []. Casting directly with `to()` can "
        "lead to inconsistent results; set `torch_dtype` in `from_pretrained()` instead to keep these modules in "
        "float32."
    ),
}


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("name", [name for name, _, _ in KNOWN_LOG_RECORDS])
def test_a_known_record_is_dropped_and_its_loggers_other_records_kept(name):
    install_log_filters()  # again: idempotent
    logger = logging.getLogger(name)
    assert sum(type(f).__name__ == "_DropMessage" for f in logger.filters) == 1
    other = "There are modules in AutoencoderKL that should be kept in float32: ['norm']. Casting ..."
    collect = _Collect()  # on the logger itself: transformers' and diffusers' loggers do not propagate to root
    logger.addHandler(collect)
    level = logger.level
    logger.setLevel(logging.DEBUG)  # whatever an earlier test in this process set (the filter is what is tested)
    try:
        logger.warning(EXAMPLES[name])
        logger.warning(other)
    finally:
        logger.removeHandler(collect)
        logger.setLevel(level)
    assert collect.messages == [other]


def test_the_known_warnings_are_ignored_and_others_are_not():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_known_warnings()
        warnings.warn("Found 401 module(s) in eval mode at the start of training. This may...", UserWarning)
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning)
        warnings.warn("torch.distributed.nn.functional.all_gather is deprecated, use ...", FutureWarning)
        warnings.warn(
            "It is recommended to use `self.log('reward_mean', ..., sync_dist=True)` when logging on epoch level in"
            " distributed setting to accumulate the metric across devices.",
            UserWarning,
        )
        warnings.warn("Found 401 module(s) in eval mode at the start of training.", DeprecationWarning)
    assert [type(w.message) for w in caught] == [DeprecationWarning]  # ignored by message and category


@pytest.mark.parametrize("resumed", [True, False])
def test_a_resumed_run_is_not_warned_about_its_own_checkpoints(resumed):
    message = "Checkpoint directory /runs/a/checkpoints exists and is not empty."
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_resume_warnings(resumed):
            warnings.warn(message, UserWarning)
        warnings.warn(message, UserWarning)  # after the fit: warned again
    assert len(caught) == (1 if resumed else 2)


def test_the_suite_ignores_what_a_run_ignores_and_fails_on_rlfts_own_warnings(pytestconfig):
    entries = pytestconfig.getini("filterwarnings")  # pyproject.toml's list, as pytest applies it
    assert entries[:2] == [r"error:::rlft(\.|$)", r"error:::tests(\.|$)"]  # first: the ignores below override
    ignored = {(e.split(":")[1], e.split(":")[2]) for e in entries[2:] if e.startswith("ignore:")}
    for pattern, category, _ in KNOWN_WARNINGS:
        assert (pattern, category.__name__) in ignored, pattern
    # no blanket filters: every ignore names a message
    assert all(e.split(":")[1] for e in entries[2:]), entries


def test_a_warning_attributed_to_rlft_or_the_tests_is_an_error_and_a_librarys_is_not():
    for module in ("rlft", "rlft.train", "tests.test_quiet"):
        with pytest.raises(DeprecationWarning):
            warnings.warn_explicit("old API", DeprecationWarning, f"{module}.py", 1, module=module)
    with pytest.warns(DeprecationWarning):
        warnings.warn_explicit("old API", DeprecationWarning, "rlftish.py", 1, module="rlftish")


def test_lightnings_own_console_handler_goes_only_where_a_root_handler_prints_its_lines():
    from rlft.quiet import one_console_line_per_record

    root, lightning = logging.getLogger(), logging.getLogger("lightning")
    saved_root, saved_lightning = list(root.handlers), list(lightning.handlers)
    own, kept = logging.StreamHandler(), logging.FileHandler(os.devnull)
    try:
        root.handlers[:] = []
        lightning.handlers[:] = [own]
        one_console_line_per_record()  # a library user without logging set up: Lightning's is the only one
        assert lightning.handlers == [own]
        root.handlers[:] = [logging.StreamHandler()]  # as Hydra sets up python -m rlft
        lightning.handlers[:] = [own, kept]
        one_console_line_per_record()
        assert lightning.handlers == [kept]
    finally:
        kept.close()
        root.handlers[:], lightning.handlers[:] = saved_root, saved_lightning
