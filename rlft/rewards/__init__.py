"""Rewards: callables from (images in [0, 1], prompts, metadata) to one float per image."""

from rlft.rewards.base import Reward, RewardRunner
from rlft.rewards.jpeg import JpegCompressibility, JpegIncompressibility, jpeg_size_kb
from rlft.rewards.simple import Brightness

__all__ = ["Brightness", "JpegCompressibility", "JpegIncompressibility", "Reward", "RewardRunner", "jpeg_size_kb"]
