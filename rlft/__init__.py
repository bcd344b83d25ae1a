"""rlft: reinforcement-learning fine-tuning of text-to-image diffusion models."""

import logging

__version__ = "0.1.0"

# transformers warns, when diffusers imports it, that its image processors fall back to PIL
# without torchvision; rlft preprocesses images with torch ops and never uses those processors.
logging.getLogger("transformers.utils.import_utils").setLevel(logging.ERROR)
