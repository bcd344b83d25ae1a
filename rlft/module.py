"""The Lightning module: one Lightning epoch is one RL epoch, and training_step is its five phases."""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from rlft.algorithms import Algorithm
from rlft.algorithms.base import AFTER_UPDATE_METRICS, EpochSamples
from rlft.errors import ConfigError
from rlft.families.base import DiffusionPolicy
from rlft.images import image_records, log_images, save_epoch_images
from rlft.prompts import PromptSource
from rlft.rewards import LearnedReward, Reward, RewardRunner
from rlft.sampler import rollout
from rlft.showcase import showcase
from rlft.streams import LIBRARIES, NOISE, PROMPTS, SHUFFLE, RandomStream, seed_global_generators, stream_seed
from rlft.trajectories import Trajectories
from rlft.xla import compile_count, is_xla, seed_device, sync


class RLModule(pl.LightningModule):
    def __init__(
        self,
        cfg: DictConfig,
        policy: DiffusionPolicy,
        algorithm: Algorithm,
        prompts: PromptSource,
        reward: Reward,
        eval_rewards: dict[str, Reward],
        run_dir: str | Path,
    ):
        super().__init__()
        self.automatic_optimization = False  # the RL epoch decides when the optimizer steps
        self.strict_loading = False  # checkpoints hold only the trainable weights
        self.cfg = cfg
        self.policy = policy
        self.algorithm = algorithm
        # The algorithm's own networks (TDPO's critic and image encoder) belong to this module, so
        # that Lightning places them on the device, wraps them for DDP and checkpoints the critic.
        self.algorithm_modules = torch.nn.ModuleDict(algorithm.modules())
        self.prompts = prompts
        self.rewards = RewardRunner({"train": reward, **{f"eval_{name}": r for name, r in eval_rewards.items()}})
        self.run_dir = Path(run_dir)
        self.history: list[dict[str, float]] = []  # per-epoch metrics, also returned by rlft.train
        self.advantage_metrics: dict[str, float] = {}
        self.showcase_results: dict[str, dict[str, float]] = {}  # "before"/"after": mean rewards
        self.backward_passes = {"synchronized": 0, "local": 0}  # this epoch's, by kind

    # -- Lightning plumbing ---------------------------------------------------------------------
    def configure_optimizers(self):
        t = self.cfg.train
        policy_optimizer = torch.optim.AdamW(
            self.policy.trainable_parameters(),
            lr=t.learning_rate,
            betas=(t.adam_beta1, t.adam_beta2),
            weight_decay=t.adam_weight_decay,
            eps=t.adam_epsilon,
        )
        return [policy_optimizer, *self.algorithm.configure_optimizers()]

    def train_dataloader(self) -> DataLoader:
        return DataLoader([0], batch_size=1)  # one step per epoch: the RL epoch itself

    def on_fit_start(self) -> None:
        for reward in self.rewards.rewards.values():
            if isinstance(reward, LearnedReward) and reward.follows_run_device:
                reward.move_to(self.device)  # this rank's device, now that Lightning has set it

    def on_train_start(self) -> None:
        if "before" not in self.showcase_results:  # (a resumed run keeps its own "before")
            self.run_showcase("before")
            self.run_geneval("before")

    def on_train_end(self) -> None:
        self.run_showcase("after")
        self.run_geneval("after")

    def run_showcase(self, when: str) -> None:
        """Rank 0 samples the fixed showcase set (cfg.showcase) and saves images/<when>.png."""
        if not self.cfg.showcase.samples or not self.trainer.is_global_zero:
            return
        scores = showcase(
            self.policy,
            self.prompts,
            self.rewards,
            self.cfg.showcase,
            self.cfg.sample,
            self.run_dir / "images" / f"{when}.png",
        )
        self.rewards.seconds = 0.0  # not an epoch's reward time
        self.showcase_results[when] = scores
        print(f"showcase {when} training: " + " ".join(f"{k}={v:.4f}" for k, v in scores.items()), flush=True)

    def run_geneval(self, when: str) -> dict[str, float]:
        """Rank 0's toy_geneval of the fixed prompts and seeds (cfg.geneval): {"geneval_<kind>": accuracy,
        "geneval_overall": ...}; `when` "before"/"after" also saves images/geneval_<when>.png and keeps
        the scores with the showcase's, and prints the per-kind table ("after": beside "before")."""
        settings = self.cfg.geneval
        if not settings.per_kind or not self.trainer.is_global_zero:
            return {}
        from rlft.toy.geneval import geneval_scores, side_by_side

        shown = when in ("before", "after")
        path = self.run_dir / "images" / f"geneval_{when}.png" if shown else None
        scores, table = geneval_scores(self.policy, settings, self.cfg.sample, path)
        if shown:  # (a NaN standard error, of one prompt per kind, is left out: showcase.json stays strict JSON)
            self.showcase_results.setdefault(when, {}).update({k: v for k, v in scores.items() if not math.isnan(v)})
            if when == "after" and "before" in self.showcase_results:
                table = side_by_side(self.showcase_results["before"], scores)
            print(f"toy_geneval {when} training (the same prompts and seeds):\n{table}", flush=True)
        return scores

    def on_fit_end(self) -> None:
        self.rewards.close()
        self.dump("weights", weights={n: p.detach().cpu() for n, p in self.named_parameters() if p.requires_grad})

    def dump(self, what: str, **tensors) -> None:
        """With debug.dump_dir set, save this rank's view of a phase (for multi-process checks)."""
        if self.cfg.debug.dump_dir:
            path = Path(self.cfg.debug.dump_dir) / f"{what}_epoch{self.current_epoch}_rank{self.global_rank}.pt"
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(tensors, path)

    def stream(self, epoch: int, stream_id: int) -> RandomStream:
        """This rank's random stream `stream_id` of `epoch`: host-side, whatever the device, and
        derived from the epoch's index (not carried forward), so resume is exact (rlft/streams.py)."""
        return RandomStream(stream_seed(self.cfg.seed, self.global_rank, epoch, stream_id))

    # -- the RL epoch ---------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        epoch = self.current_epoch
        seed = stream_seed(self.cfg.seed, self.global_rank, epoch, LIBRARIES)
        seed_global_generators(seed)
        seed_device(self.device, seed)
        self.policy.eval()  # no dropout anywhere: sampling and training must evaluate the same policy
        self.algorithm_modules.eval()  # a critic switches its dropout on only while it trains
        timings = {}
        trajectories = self.rollout(epoch, timings)  # 1. rollout (rewards start in the background)
        self.score(trajectories, timings)  # 2. reward
        self.compute_advantages(trajectories)  # 3. advantage
        stats = self.optimize(trajectories, epoch, timings)  # 4. optimize
        self.report(trajectories, stats, timings, epoch)  # 5. report

    def rollout(self, epoch: int, timings: dict) -> Trajectories:
        s = self.cfg.sample
        start = time.perf_counter()
        trajectories = rollout(
            self.policy,
            self.prompts,
            self.rewards,
            batch_size=s.batch_size,
            num_batches=s.num_batches_per_epoch,
            num_steps=s.num_steps,
            guidance_scale=s.guidance_scale,
            stream=self.stream(epoch, NOISE),
            rng=random.Random(stream_seed(self.cfg.seed, self.global_rank, epoch, PROMPTS)),
            progress=self.trainer.is_global_zero,
            description=f"epoch {epoch} sampling",
            state_encoder=self.algorithm.state_encoder(),
            reference=self.algorithm.needs_reference,
            trajectory_dtype=getattr(torch, self.cfg.perf.trajectory_dtype),
            images_per_prompt=s.images_per_prompt,
            same_noise_per_group=s.same_noise_per_group,
        )
        timings["sampling_s"] = time.perf_counter() - start
        return trajectories

    def score(self, trajectories: Trajectories, timings: dict) -> None:
        start = time.perf_counter()
        scores = self.rewards.collect()
        timings["reward_wait_s"] = time.perf_counter() - start
        timings["reward_s"] = self.rewards.seconds
        self.rewards.seconds = 0.0
        trajectories.rewards = scores.pop("train").to(self.device)
        trajectories.eval_rewards = {name.removeprefix("eval_"): v.to(self.device) for name, v in scores.items()}

    def compute_advantages(self, trajectories: Trajectories) -> None:
        """Advantages over the whole epoch of every rank; each rank keeps the rows of its samples."""
        values = self.algorithm.state_values(trajectories)
        reference = trajectories.reference_log_probs
        rewards = self.gather(trajectories.rewards)
        # checked on every rank's rewards at once, so that all ranks stop together
        check_train_rewards(rewards, self.rewards.rewards["train"], self.cfg.reward.get("_target_"))
        samples = EpochSamples(
            rewards=rewards,
            prompts=self.gather_strings(trajectories.prompts),
            log_probs=self.gather(trajectories.log_probs),
            reference_log_probs=None if reference is None else self.gather(reference),
            values=None if values is None else self.gather(values),
        )
        targets = self.algorithm.advantages(samples)
        n = len(trajectories)
        rows = slice(self.global_rank * n, (self.global_rank + 1) * n)
        trajectories.advantages = targets.advantages[rows].to(self.device)
        if targets.returns is not None:
            trajectories.returns = targets.returns[rows].to(self.device)
        trajectories.values = values
        trajectories.global_rewards = samples.rewards
        self.advantage_metrics = targets.metrics
        self.dump(
            "advantages",
            prompts=trajectories.prompts,
            rewards=trajectories.rewards.cpu(),
            advantages=trajectories.advantages.cpu(),
        )

    def optimize(self, trajectories: Trajectories, epoch: int, timings: dict) -> dict[str, float]:
        start = time.perf_counter()
        self.backward_passes = {"synchronized": 0, "local": 0}
        stats = self.algorithm.optimize(self, trajectories, self.stream(epoch, SHUFFLE))
        sync(self.device)  # on XLA: run what the epoch left pending (e.g. a neuron reset) inside it
        timings["training_s"] = time.perf_counter() - start
        self.dump("optimize", **self.backward_passes)  # every rank must show the same counts
        return stats

    # -- what algorithms use to train (the Learner protocol) ------------------------------------
    def backpropagate(self, loss: torch.Tensor, synchronize: bool = True) -> None:
        """Backward of one micro-step. `synchronize=False` on the micro-steps that no optimizer step
        follows: under DDP their gradients accumulate locally and the all-reduce runs once, on the
        micro-step before the step (every rank must pass the same sequence of flags)."""
        # (not `backward`: that name is a LightningModule hook)
        strategy = self.trainer.strategy
        self.backward_passes["synchronized" if synchronize else "local"] += 1
        if synchronize or not hasattr(strategy, "block_backward_sync"):
            self.manual_backward(loss)
        else:
            with strategy.block_backward_sync():  # DDP's no_sync(); a no-op for other strategies
                self.manual_backward(loss)
        sync(self.device)  # on XLA: one micro-step's forward and backward per graph

    def optimizer_step(self) -> None:
        """Step every optimizer on its accumulated gradients (clipped in on_before_optimizer_step),
        then clear them."""
        optimizers = self.optimizers()
        for optimizer in optimizers if isinstance(optimizers, list) else [optimizers]:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Clip this optimizer's gradients to train.max_grad_norm (each model separately).

        Lightning's precision plugins call this hook after 16-mixed's GradScaler has unscaled the
        gradients and after XLA has reduced them, so the norm clipped is the true one whatever the
        precision. (Clipping before `optimizer.step()` would clip gradients still multiplied by the
        loss scale, i.e. clip them about 2^16 times too hard.)"""
        self.clip_gradients(optimizer, gradient_clip_val=self.cfg.train.max_grad_norm, gradient_clip_algorithm="norm")

    def progress(self, total: int) -> tqdm:
        return tqdm(
            total=total,
            desc=f"epoch {self.current_epoch} training",
            disable=not self.trainer.is_global_zero,
            leave=False,
            unit="step",
        )

    def report(self, trajectories: Trajectories, stats: dict, timings: dict, epoch: int) -> None:
        rewards = trajectories.global_rewards
        samples = len(rewards)
        metrics = {
            "reward_mean": rewards.mean().item(),
            "reward_std": rewards.std(unbiased=False).item(),
            "samples": float(samples),
            **self.advantage_metrics,
            **stats,
            **timings,
            "images_per_s": samples / max(timings["sampling_s"] + timings["reward_wait_s"], 1e-9),
        }
        if is_xla(self.device):  # graphs compiled so far in this process: flat after the first epoch
            metrics["xla_compiles"] = float(compile_count())
        for name, values in trajectories.eval_rewards.items():
            # over the images the eval reward scored (NaN: not scored, e.g. a per-kind reward on another kind)
            metrics[f"eval_{name}_mean"], metrics[f"eval_{name}_std"] = scored_mean_std(self.gather(values))
        metrics = self.mean_over_ranks(metrics)
        every = self.cfg.geneval.every
        if every and self.cfg.geneval.per_kind:  # a stable column: NaN in the epochs between evaluations
            measured_now = (epoch + 1) % every == 0
            metrics.update(self.run_geneval("epoch") if measured_now else dict.fromkeys(geneval_columns(), math.nan))
        # Logged as host tensors, already reduced: on XLA, device scalars built from Python floats
        # would make Lightning's epoch reduction a new graph (a compilation) every epoch.
        self.log_dict({k: torch.tensor(v) for k, v in metrics.items()}, on_step=False, on_epoch=True)
        # (unmeasured diagnostics and eval rewards that scored no image are NaN in the loggers, a
        # stable column, but absent from the history, so that final_metrics.json stays strict JSON)
        measured = {
            k: v
            for k, v in metrics.items()
            if not ((k in AFTER_UPDATE_METRICS or k.startswith(("eval_", "geneval_"))) and math.isnan(v))
        }
        self.history.append({"epoch": epoch, **measured})
        if self.trainer.is_global_zero:
            print(console_line(epoch, measured, self.algorithm.console_metrics), flush=True)
            count = min(len(trajectories), self.cfg.sample.num_images_logged)
            if count:
                records = image_records(
                    trajectories.prompts[:count],
                    trajectories.rewards[:count].float().cpu().tolist(),
                    {name: v[:count].float().cpu().tolist() for name, v in trajectories.eval_rewards.items()},
                )
                captions = save_epoch_images(trajectories.images[:count], records, epoch, self.run_dir / "images")
                log_images(self.loggers, trajectories.images[:count], captions, step=self.global_step)

    # -- collectives ----------------------------------------------------------------------------
    def gather(self, values: torch.Tensor) -> torch.Tensor:
        """Concatenate a per-rank (N, ...) tensor over ranks, in rank order."""
        if self.trainer.world_size == 1:
            return values
        gathered = self.all_gather(values)
        return gathered.reshape(-1, *values.shape[1:])

    def mean_over_ranks(self, metrics: dict[str, float]) -> dict[str, float]:
        """Average the epoch's metrics over ranks in one collective. Most are already identical on
        every rank; the local timings and PPO diagnostics are not."""
        if self.trainer.world_size == 1:
            return metrics
        values = torch.tensor(list(metrics.values()), dtype=torch.float32, device=self.device)
        reduced = self.trainer.strategy.reduce(values, reduce_op="mean").cpu().tolist()
        return dict(zip(metrics, reduced, strict=True))

    def gather_strings(self, values: list[str]) -> list[str]:
        """Concatenate every rank's strings in rank order (the same count on every rank).

        Sent as zero-padded UTF-8 bytes through the tensor all-gather, which every backend has
        (all_gather_object is not available on XLA); the width is rounded up to 64 bytes so that XLA
        sees few distinct shapes.
        """
        if self.trainer.world_size == 1:
            return list(values)
        encoded = [value.encode() for value in values]
        longest = self.gather(torch.tensor([max(map(len, encoded), default=1)], device=self.device)).max().item()
        width = 64 * -(-int(longest) // 64)
        padded = torch.zeros((len(encoded), width), dtype=torch.uint8)
        for row, data in enumerate(encoded):
            padded[row, : len(data)] = torch.tensor(list(data), dtype=torch.uint8)
        gathered = self.gather(padded.to(self.device)).cpu()
        return [bytes(row).rstrip(b"\0").decode() for row in gathered.tolist()]

    # -- checkpoints ----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trainable = {name for name, param in self.named_parameters() if param.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["rlft"] = {
            "algorithm": self.algorithm.state_dict(),
            "history": self.history,
            "showcase": self.showcase_results,
            # plain types only, so that Lightning's weights_only loading accepts the checkpoint
            "rng": {"python": random.getstate(), "numpy": _numpy_state(), "torch": torch.get_rng_state()},
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint["rlft"]
        self.algorithm.load_state_dict(state["algorithm"])
        self.history = list(state["history"])
        self.showcase_results = dict(state.get("showcase", {}))
        random.setstate(state["rng"]["python"])
        kind, keys, position, has_gauss, cached = state["rng"]["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
        torch.set_rng_state(state["rng"]["torch"])


def geneval_columns() -> list[str]:
    """The metrics run_geneval returns (rlft.toy.geneval.geneval_scores' keys), NaN in the epochs between."""
    from rlft.toy.compositional import KINDS

    return [f"geneval_{kind}" for kind in (*KINDS, "overall")] + ["geneval_overall_se"]


def scored_mean_std(values: torch.Tensor) -> tuple[float, float]:
    """Mean and (population) standard deviation of a reward over the images it scored: NaN marks an
    image a reward does not score. (NaN, NaN) when it scored none."""
    unscored = torch.isnan(values)
    if not unscored.any():
        return values.mean().item(), values.std(unbiased=False).item()
    kept = values[~unscored]
    if not kept.numel():
        return math.nan, math.nan
    return kept.mean().item(), kept.std(unbiased=False).item()


def check_train_rewards(rewards: torch.Tensor, reward: Reward, target: str | None = None) -> None:
    """The training reward must score every image: NaN ("not scored") is for eval rewards only."""
    unscored = int(torch.isnan(rewards).sum())
    if unscored:
        shown = getattr(reward, "name", type(reward).__name__)
        raise ConfigError(
            f"reward: the training reward {shown} ({target or type(reward).__qualname__}) did not score {unscored} "
            f"of the epoch's {rewards.numel()} images (NaN: not scored); a training reward must score every image: "
            "train on prompts it scores (a per-kind toy_geneval reward: prompt.kinds=[its kind]) or on a reward "
            "that scores them all, and list the partial one in eval_rewards"
        )


def console_line(epoch: int, metrics: dict[str, float], shown: tuple[str, ...] = ()) -> str:
    """The epoch's line on the console: rewards, the optimizer steps taken, the algorithm's `shown`
    metrics that were measured (policy-ratio diagnostics are absent from an epoch of one optimizer
    step, where they would read 0 by construction), and the times."""
    parts = [f"epoch {epoch}:", f"reward_mean={metrics['reward_mean']:.4f}", f"reward_std={metrics['reward_std']:.4f}"]
    if "optimizer_steps" in metrics:
        parts.append(f"steps={metrics['optimizer_steps']:.0f}")
    for key in shown:
        if key in metrics:
            form = ".2e" if key == "approx_kl" else ".3f" if "frac" in key else ".4g"
            parts.append(f"{key}={metrics[key]:{form}}")
    parts.append(f"sampling={metrics['sampling_s']:.1f}s training={metrics['training_s']:.1f}s")
    return " ".join(parts)


def _numpy_state() -> tuple:
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return kind, keys.tolist(), int(position), int(has_gauss), float(cached)
