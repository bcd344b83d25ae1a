"""The XLA test set (`make test-xla`): torch-xla on the CPU backend, in the TPU environment."""

import os

os.environ.setdefault("PJRT_DEVICE", "CPU")  # before torch_xla is imported anywhere
