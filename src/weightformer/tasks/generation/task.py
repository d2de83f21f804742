"""WeightFormer-DiT as a Task of the training engine: DiT's hybrid diffusion loss on class-labelled images.

Images come from an ImageNet-layout folder (or the embedded shapes dataset), resized, centre-cropped, flipped
at random and scaled to [-1, 1], and the model learns DiT's process on the pixels; or, with latents_dir, it learns
it on the VAE latents `weightformer dit extract` wrote (the latent of each image or of its mirror image, at
random), and the samples are decoded by the VAE. Validation reports the hybrid loss at fixed noise and steps,
so its value is comparable across epochs; the visual report is a grid of guided samples, one row per class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torchvision import transforms

from ...diffusion import create_diffusion, ddpm_sample
from ...engine.config import EngineConfig, free
from ...engine.distributed import Dist, all_reduce_sum, is_primary_process
from ...engine.loop import fit
from ...engine.task import Datasets, Task
from ...models import create_model
from ..classification.data import FolderDataset, check_splits, collate_images
from ..classification.synthetic import dataset_folder
from .latents import LatentDataset, load_vae, read_meta, vae_decoder

__all__ = ["GenerationConfig", "GenerationTask", "build_generator", "checkpoint_model", "train"]


@dataclass
class GenerationConfig(EngineConfig):
    """Everything a generation run depends on (DiT's recipe by default: AdamW 1e-4, no decay, EMA 0.9999)."""

    data_dir: str | None = None  # ImageNet layout (<data_dir>/train/<class>/*), or "synthetic"
    latents_dir: str | None = None  # train on latents from `weightformer dit extract` instead of pixels
    vae: str | None = None  # the latents' VAE (read from latents_dir), decodes the samples
    train_split: str = "train"
    val_split: str = "val"
    synthetic: dict[str, Any] = field(default_factory=dict)
    model: str = "weightformer_dit_s_2"
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # hidden_size, depth, patch_size, ...
    image_size: int = 32
    hflip: float = 0.5
    samples_per_class: int = free(2)  # the report's grid
    sample_steps: int = free(50)  # respaced DDPM steps for the report
    cfg_scale: float = free(4.0)
    # After training, judge the samples with a classifier trained on the real images (judge.py); 0: off.
    judge_samples_per_class: int = free(0)
    judge_epochs: int = free(3)
    judge_scheduler: str = free("ddpm")
    judge_steps: int = free(25)


def build_generator(cfg: GenerationConfig, num_classes: int, input_size: int, in_channels: int) -> nn.Module:
    """The WeightFormer-DiT a config describes, freshly initialised (input_size is only its default size)."""
    return create_model(cfg.model, input_size=input_size, in_channels=in_channels, num_classes=num_classes,
                        **cfg.model_kwargs)


def checkpoint_model(cfg: GenerationConfig, extras: dict[str, Any]) -> nn.Module:
    """The network of a generation checkpoint: pixels, or the latents of Stable Diffusion's VAE (4 channels)."""
    return build_generator(cfg, len(extras["class_names"]), cfg.image_size, 4 if cfg.vae else 3)


class GenerationTask(Task):
    """Class-conditional image generation: WeightFormer-DiT trained with DiT's hybrid loss."""

    name = "generation"
    best_metric, best_is_higher = "loss", False

    def __init__(self, cfg: GenerationConfig) -> None:
        super().__init__(cfg)
        self.meta: dict[str, Any] | None = None  # latent runs: what `dit extract` wrote
        if cfg.latents_dir is not None:
            self.meta = read_meta(cfg.latents_dir)
            cfg.vae, cfg.image_size = self.meta["vae"], self.meta["image_size"]  # recorded in the checkpoints
        elif cfg.data_dir is None:
            raise ValueError("No dataset: set data_dir (an ImageNet-layout folder), --data-dir synthetic, or "
                             "latents_dir (from `weightformer dit extract`).")
        from ...models.dit import DIT_CONFIGS

        patch = cfg.model_kwargs.get("patch_size", DIT_CONFIGS.get(cfg.model, {}).get("patch_size", 1))
        if self.input_size % patch:
            what = f"latent size {self.input_size} ({cfg.image_size} px)" if self.meta else \
                f"image_size {cfg.image_size}"
            raise ValueError(f"{what} must be a multiple of the patch size {patch} of {cfg.model}.")
        self.diffusion = create_diffusion(learn_sigma=cfg.model_kwargs.get("learn_sigma", True))
        self.classes: list[str] = []

    @property
    def input_size(self) -> int:
        """The model's input side: pixels, or latent cells."""
        return self.cfg.image_size // (self.meta["factor"] if self.meta else 1)

    def prepare_data(self) -> None:
        if self.meta is None:
            dataset_folder(self.cfg.data_dir, self.cfg.synthetic)  # the embedded set is written here, once per node

    def build_datasets(self, d: Dist) -> Datasets:
        cfg = self.cfg
        if self.meta is not None:
            self.classes = list(self.meta["classes"])
            train = LatentDataset(cfg.latents_dir, cfg.train_split, cfg.hflip)
            val = LatentDataset(cfg.latents_dir, cfg.val_split)
            return Datasets(train, val, f"{len(self.classes)} classes, {len(train)} train / {len(val)} val latents "
                                        f"({self.input_size}x{self.input_size}, VAE {cfg.vae}) from {cfg.latents_dir}")
        data_dir = dataset_folder(cfg.data_dir, cfg.synthetic)
        self.classes = check_splits(data_dir, cfg.train_split, cfg.val_split)
        size = cfg.image_size
        to_unit = [transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)]  # [-1, 1]
        common = [transforms.Resize(size), transforms.CenterCrop(size)]
        train = FolderDataset(str(data_dir / cfg.train_split),
                              transform=transforms.Compose([*common, transforms.RandomHorizontalFlip(cfg.hflip),
                                                            *to_unit]))
        val = FolderDataset(str(data_dir / cfg.val_split), transform=transforms.Compose([*common, *to_unit]))
        return Datasets(train, val, f"{len(self.classes)} classes, {len(train)} train / {len(val)} val images "
                                    f"at {size}px from {data_dir}")

    def collate(self, samples: list[Any], train: bool) -> tuple[Any, int]:
        return collate_images(samples)

    def build_model(self) -> nn.Module:
        cfg = self.cfg
        channels = self.meta["latent_channels"] if self.meta else 3
        return build_generator(cfg, len(self.classes), self.input_size, channels)

    def training_loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        images, labels = batch  # (B, 3, H, W) in [-1, 1], (B,)
        t = torch.randint(0, self.diffusion.num_timesteps, (len(images),), device=images.device)
        return self.diffusion.training_losses(model, images, t, dict(y=labels))["loss"].mean()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Any, d: Dist, amp_dtype: torch.dtype | None) -> dict[str, float]:
        """The hybrid loss and its MSE part over the validation images, at noise and steps fixed by position."""
        model.eval()
        total, mse, count = 0.0, 0.0, 0
        generator = torch.Generator().manual_seed(1234 + d.rank)
        for collated in loader:
            if collated.batch is None:
                continue
            images, labels = (t.to(d.device) for t in collated.batch)
            t = torch.randint(0, self.diffusion.num_timesteps, (len(images),), generator=generator).to(d.device)
            noise = torch.randn(images.shape, generator=generator).to(d.device)
            terms = self.diffusion.training_losses(model, images, t, dict(y=labels), noise=noise)
            total, mse, count = total + terms["loss"].sum().item(), mse + terms["mse"].sum().item(), count + len(t)
        total, mse, count = all_reduce_sum([total, mse, count], d)
        return {"loss": total / max(count, 1), "mse": mse / max(count, 1), "images": int(count)}

    def checkpoint_extras(self) -> dict[str, Any]:
        return {"class_names": self.classes}

    def report(self, model: nn.Module, run_dir: Path, epoch: int, d: Dist) -> None:
        """A grid of guided samples, one row per class, to <run>/samples.png (rank 0)."""
        if not d.primary:
            return
        from torchvision.utils import save_image

        cfg = self.cfg
        labels = torch.arange(len(self.classes), device=d.device).repeat_interleave(cfg.samples_per_class)
        generator = torch.Generator(device=d.device).manual_seed(0)
        images = ddpm_sample(model, create_diffusion(str(cfg.sample_steps)), labels, self.input_size,
                             cfg_scale=cfg.cfg_scale, generator=generator, guided_channels=model.in_channels)
        if self.meta is not None:  # latents -> pixels
            with torch.no_grad():
                images = vae_decoder(load_vae(cfg.vae, d.device))(images)  # (N, 3, H, W) in about [-1, 1]
        path = run_dir / "samples.png"
        save_image((images.clamp(-1, 1) + 1) / 2, path, nrow=cfg.samples_per_class)
        print(f"Samples ({cfg.sample_steps} steps, guidance {cfg.cfg_scale}), one row per class: {path}", flush=True)


def train(cfg: GenerationConfig) -> dict[str, Any]:
    """Train (or resume) the generation run `cfg` describes; then judge it when cfg.judge_samples_per_class."""
    result = fit(GenerationTask(cfg))
    judge = cfg.judge_samples_per_class > 0 and cfg.latents_dir is None  # the judge works on pixels
    if judge and not result.get("preempted") and is_primary_process():
        from .judge import judge_run, train_judge

        run_dir = Path(result["run_dir"])
        data_dir = dataset_folder(cfg.data_dir, cfg.synthetic)
        classifier = train_judge(data_dir, cfg.image_size, run_dir, cfg.judge_epochs)
        result["judge"] = judge_run(run_dir / "checkpoints" / "last.pth", data_dir, classifier,
                                    cfg.judge_samples_per_class, cfg.judge_scheduler, cfg.judge_steps, cfg.cfg_scale)
    return result
