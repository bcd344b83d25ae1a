"""Rewards: callables from (images in [0, 1], prompts, metadata) to one float per image."""

from rlft.rewards.aesthetic import AestheticScore
from rlft.rewards.base import Reward, RewardRunner
from rlft.rewards.hpsv2 import HPSv2
from rlft.rewards.imagereward import ImageReward
from rlft.rewards.jpeg import JpegCompressibility, JpegIncompressibility, jpeg_size_kb
from rlft.rewards.learned import LearnedReward
from rlft.rewards.llava import LlavaBertScore, LlavaVQA
from rlft.rewards.pickscore import PickScore
from rlft.rewards.remote import RemoteReward
from rlft.rewards.simple import Brightness

__all__ = [
    "AestheticScore",
    "Brightness",
    "HPSv2",
    "ImageReward",
    "JpegCompressibility",
    "JpegIncompressibility",
    "LearnedReward",
    "LlavaBertScore",
    "LlavaVQA",
    "PickScore",
    "RemoteReward",
    "Reward",
    "RewardRunner",
    "jpeg_size_kb",
]
