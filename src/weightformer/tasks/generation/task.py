"""WeightFormer-DiT as a Task of the training engine: DiT's hybrid diffusion loss on class-labelled images.

Images come from an ImageNet-layout folder (or the embedded shapes dataset), resized, centre-cropped, flipped
at random and scaled to [-1, 1], and the model learns DiT's process on the pixels; or, with latents_dir, it learns
it on the VAE latents `weightformer dit extract` wrote (the latent of each image or of its mirror image, at
random), and the samples are decoded by the VAE. Validation reports the hybrid loss at noise and steps fixed by
each sample's index, so its value is comparable across epochs and numbers of processes; the visual report is a
grid of guided samples, one row per class.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import Dataset
from torchvision import transforms

from ...diffusion import create_diffusion, ddpm_sample
from ...engine.config import EngineConfig, free, setting
from ...engine.data import Unreadable
from ...engine.distributed import Dist, is_primary_process
from ...engine.loop import fit
from ...engine.metrics import Mean, Metric
from ...engine.task import Datasets, Task
from ...models import create_model
from ..classification.data import FolderDataset, check_splits, collate_images
from ..classification.synthetic import dataset_folder
from .latents import LatentDataset, load_vae, read_meta, same_vae, vae_decoder
from .sample import SCHEDULERS, guided_channels

__all__ = ["GenerationConfig", "GenerationTask", "build_generator", "checkpoint_model", "train"]

PIXEL_SIZE = 32  # image_size of a pixel run left unset (an image folder, or the embedded set at its default)


@dataclass
class GenerationConfig(EngineConfig):
    """Everything a generation run depends on. Optimisation values are the engine's unless a recipe sets them:
    DiT trains with AdamW lr 1e-4, no weight decay, EMA 0.9999; configs/generation/ holds the embedded default."""

    data_dir: str | None = None  # ImageNet layout (<data_dir>/train/<class>/*), or "synthetic"
    latents_dir: str | None = None  # train on latents from `weightformer dit extract` instead of pixels
    # The latents' VAE, which decodes the samples; unset: read from latents_dir's meta.json (latent runs only).
    vae: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    synthetic: dict[str, Any] = field(default_factory=dict)
    model: str = "weightformer_dit_s_2"
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # hidden_size, depth, patch_size, ...
    # Pixels per side. Unset: the latents' extraction size, the embedded dataset's size, or 32 for a folder.
    # The run records the resolved value; a value that contradicts the latents is refused.
    image_size: int | None = setting(None, ge=1)
    hflip: float = setting(0.5, ge=0, le=1)
    samples_per_class: int = free(2, ge=1)  # the report's grid
    sample_steps: int = free(50, ge=1)  # respaced DDPM steps for the report
    cfg_scale: float = free(4.0, ge=0)  # classifier-free guidance; 1: none
    # Channels classifier-free guidance mixes in the report's grid: 3 (DiT's release: the first 3 of 4 latent
    # channels) or "all". Pixel models have 3 channels, so only latent runs see a difference.
    guided_channels: int | str = free(3)
    # After training, judge the samples with a classifier trained on the real images (judge.py); 0: off.
    judge_samples_per_class: int = free(0, ge=0)
    judge_epochs: int = free(3, ge=1)
    judge_scheduler: str = free("ddpm", choices=SCHEDULERS)
    judge_steps: int = free(25, ge=1)


def build_generator(cfg: GenerationConfig, num_classes: int, input_size: int, in_channels: int) -> nn.Module:
    """The WeightFormer-DiT a config describes, freshly initialised (input_size is only its default size)."""
    return create_model(cfg.model, input_size=input_size, in_channels=in_channels, num_classes=num_classes,
                        **cfg.model_kwargs)


def checkpoint_model(cfg: GenerationConfig, extras: dict[str, Any]) -> nn.Module:
    """The network of a generation checkpoint: pixels, or the latents of Stable Diffusion's VAE (4 channels)."""
    return build_generator(cfg, len(extras["class_names"]), cfg.image_size, 4 if cfg.vae else 3)


class WithIndex(Dataset):
    """A dataset whose samples carry their index as a last element (validation noise is drawn from it)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: int | tuple[int, int]) -> Any:
        sample = self.dataset[item]
        index = item[0] if isinstance(item, tuple) else item
        return sample if isinstance(sample, Unreadable) else (*sample, index)


def _resolve_data_values(cfg: GenerationConfig, meta: dict[str, Any] | None) -> None:
    """Fill the unset image_size and vae from the data, refusing values that contradict the latents' meta.json.

    The resolved values are written into cfg, so the checkpoints record what the run used (`dit sample` reads
    them) and a resumption with the same flags, unset or equal, compares equal to the saved config.
    """
    if meta is None:
        if cfg.vae is not None:
            raise ValueError(f"vae {cfg.vae!r} is for latent runs only: set latents_dir (its meta.json names the "
                             "VAE) or leave vae unset to train on pixels.")
        if cfg.image_size is None:  # the embedded dataset's own size (its generator's default is 32 px too)
            embedded = cfg.data_dir == "synthetic"
            cfg.image_size = cfg.synthetic.get("image_size", PIXEL_SIZE) if embedded else PIXEL_SIZE
        return
    where = f"the latents in {cfg.latents_dir}"
    size, vae = meta["image_size"], meta["vae"]
    if cfg.image_size is not None and cfg.image_size != size:
        raise ValueError(f"image_size {cfg.image_size} conflicts with {where} (extracted at {size} px): leave "
                         f"image_size unset to take theirs, or extract the images again with `weightformer dit "
                         f"extract ... --image-size {cfg.image_size}`.")
    if cfg.vae is not None and not same_vae(cfg.vae, vae):
        raise ValueError(f"vae {cfg.vae!r} conflicts with {where} (encoded with {vae!r}): leave vae unset to take "
                         f"theirs, or extract the images again with `weightformer dit extract ... --vae {cfg.vae}`.")
    cfg.image_size, cfg.vae = size, vae  # the meta's spelling of the VAE, so resumptions compare equal


class GenerationTask(Task):
    """Class-conditional image generation: WeightFormer-DiT trained with DiT's hybrid loss."""

    name = "generation"
    best_metric, best_is_higher = "loss", False

    def __init__(self, cfg: GenerationConfig) -> None:
        super().__init__(cfg)
        self.meta: dict[str, Any] | None = None  # latent runs: what `dit extract` wrote
        if cfg.latents_dir is not None:
            self.meta = read_meta(cfg.latents_dir)
        elif cfg.data_dir is None:
            raise ValueError("No dataset: set data_dir (an ImageNet-layout folder), --data-dir synthetic, or "
                             "latents_dir (from `weightformer dit extract`).")
        _resolve_data_values(cfg, self.meta)
        guided_channels(cfg.guided_channels, self.meta["latent_channels"] if self.meta else 3)  # refused now
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
            val = WithIndex(LatentDataset(cfg.latents_dir, cfg.val_split))
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
        val = WithIndex(FolderDataset(str(data_dir / cfg.val_split), transform=transforms.Compose([*common,
                                                                                                   *to_unit])))
        return Datasets(train, val, f"{len(self.classes)} classes, {len(train)} train / {len(val)} val images "
                                    f"at {size}px from {data_dir}")

    def collate(self, samples: list[Any], train: bool) -> tuple[Any, int]:
        if train:
            return collate_images(samples)
        (images, labels), size = collate_images([s[:2] for s in samples])
        return (images, labels, torch.tensor([s[2] for s in samples])), size  # validation: with sample indices

    def build_model(self) -> nn.Module:
        cfg = self.cfg
        channels = self.meta["latent_channels"] if self.meta else 3
        return build_generator(cfg, len(self.classes), self.input_size, channels)

    def training_loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        images, labels = batch  # (B, C, H, W) images in [-1, 1] or VAE latents, (B,)
        t = torch.randint(0, self.diffusion.num_timesteps, (len(images),), device=images.device)
        return self.diffusion.training_losses(model, images, t, dict(y=labels))["loss"].mean()

    def validation_metrics(self) -> dict[str, Metric]:
        return {"loss": Mean("loss"), "mse": Mean("mse")}

    def validation_step(self, model: nn.Module, batch: tuple[torch.Tensor, ...], metrics: dict[str, Metric]) -> None:
        """The hybrid loss and its MSE part, at a step and noise drawn from each sample's index: the same
        numbers on any number of processes and at every epoch, so the values are comparable."""
        images, labels, indices = batch  # (B, C, H, W), (B,), (B,)
        t, noise = [], []
        for index in indices.tolist():
            generator = torch.Generator().manual_seed(1234 + index)
            t.append(torch.randint(0, self.diffusion.num_timesteps, (), generator=generator))
            noise.append(torch.randn(images.shape[1:], generator=generator))
        t, noise = torch.stack(t).to(images.device), torch.stack(noise).to(images.device, images.dtype)
        terms = self.diffusion.training_losses(model, images, t, dict(y=labels), noise=noise)
        metrics["loss"].update(terms["loss"])
        metrics["mse"].update(terms["mse"])

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
                             cfg_scale=cfg.cfg_scale, generator=generator,
                             guided_channels=guided_channels(cfg.guided_channels, model.in_channels))
        if self.meta is not None:  # latents -> pixels
            with torch.no_grad():
                images = vae_decoder(load_vae(cfg.vae, d.device))(images)  # (N, 3, H, W) in about [-1, 1]
        path = run_dir / "samples.png"
        save_image((images.clamp(-1, 1) + 1) / 2, path, nrow=cfg.samples_per_class)
        print(f"Samples ({cfg.sample_steps} steps, guidance {cfg.cfg_scale}), one row per class: {path}", flush=True)


def train(cfg: GenerationConfig) -> dict[str, Any]:
    """Train (or resume) the generation run `cfg` describes; then judge it when cfg.judge_samples_per_class and
    write the judge's numbers to <run>/judge.json (they are also returned under "judge")."""
    result = fit(GenerationTask(cfg))
    judge = cfg.judge_samples_per_class > 0 and cfg.latents_dir is None  # the judge works on pixels
    if judge and not result.get("preempted") and is_primary_process():
        from .judge import judge_run, train_judge

        run_dir = Path(result["run_dir"])
        data_dir = dataset_folder(cfg.data_dir, cfg.synthetic)
        classifier = train_judge(data_dir, cfg.image_size, run_dir, cfg.judge_epochs)
        result["judge"] = judge_run(run_dir / "checkpoints" / "last.pth", data_dir, classifier,
                                    cfg.judge_samples_per_class, cfg.judge_scheduler, cfg.judge_steps, cfg.cfg_scale,
                                    guided=cfg.guided_channels)
        (run_dir / "judge.json").write_text(json.dumps(result["judge"], indent=1) + "\n")
    return result
