"""FID and Inception Score of generated images, in Inception-v3's feature space or any classifier's of ours.

    FID = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))       (Heusel et al., 2017), features of two image sets
    IS  = exp(E_x KL(p(y|x) || p(y)))                            (Salimans et al., 2016), mean and std over splits

Features of a classifier checkpoint of this package are its pre-logits (pooled, normed tokens) and its softmax
gives the class probabilities, so generation is scored with no download. Inception-v3 (torch-fidelity's port of
the TensorFlow network the papers use: pool3 2048-d features, 1008 logits) is loaded from the local torch hub
cache only; a missing file is said in one line with the command that fetches it elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

__all__ = ["frechet_distance", "gaussian_stats", "inception_score", "load_images", "classifier_scorer",
           "inception_scorer", "score", "INCEPTION_WEIGHTS"]

INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"
_INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS}"
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".JPEG"}


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """features (N, D) -> mean (D,) and unbiased covariance (D, D), in float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"FID needs at least 2 feature vectors, got an array of shape {features.shape}.")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """The Fréchet distance of N(mu1, sigma1) and N(mu2, sigma2), in float64.

    sqrt(S1 S2) by scipy's sqrtm; when the product is singular (fewer samples than dimensions) eps * I is added
    to both covariances first, as in the reference implementation (pytorch-fid).
    """
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(np.float64(mu1)), np.atleast_1d(np.float64(mu2))
    sigma1, sigma2 = np.atleast_2d(np.float64(sigma1)), np.atleast_2d(np.float64(sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"Feature statistics of different sizes: {mu1.shape} and {mu2.shape}.")
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(sigma1)) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = covmean.real  # imaginary parts are numerical noise of a product of symmetric PSD matrices
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def inception_score(probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """probs (N, K) class probabilities -> (mean, std) over `splits` equal parts of exp(E KL(p(y|x) || p(y)))."""
    probs = np.asarray(probs, dtype=np.float64)
    splits = max(1, min(splits, len(probs)))
    scores = []
    for part in np.array_split(probs, splits):
        marginal = part.mean(axis=0, keepdims=True)  # p(y) over the part
        kl = (part * (np.log(np.clip(part, 1e-30, None)) - np.log(np.clip(marginal, 1e-30, None)))).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def load_images(source: str | Path, limit: int | None = None) -> np.ndarray:
    """(N, H, W, 3) uint8 from an npz (arr_0, ADM's layout) or a folder of images (searched recursively).

    A folder's images are converted to RGB; images of another size than the first are resized to it (bicubic).
    `limit` keeps about that many of a folder's files, evenly spaced in sorted order (so every class folder
    keeps its share).
    """
    source = Path(source)
    if source.is_file() and source.suffix == ".npz":
        try:
            with np.load(source) as npz:
                images = npz["arr_0"]
        except (KeyError, ValueError, OSError) as error:
            raise ValueError(f"{source} is not an npz of images under arr_0 ({type(error).__name__}).") from None
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"{source}: arr_0 must be uint8 images (N, H, W, 3), got {images.dtype} "
                             f"{images.shape}.")
        return images
    if not source.is_dir():
        raise ValueError(f"{source} is neither an .npz of samples nor a folder of images.")
    files = sorted(p for p in source.rglob("*") if p.suffix in _IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"No images (png, jpg, ...) under {source}.")
    if limit is not None and len(files) > limit:
        files = files[:: len(files) // limit][:limit]
    images, size = [], None
    for path in files:
        with Image.open(path) as image:
            image = image.convert("RGB")
            size = size or image.size
            images.append(np.asarray(image if image.size == size else image.resize(size, Image.BICUBIC)))
    return np.stack(images)


Scorer = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # uint8 (N, H, W, 3) -> features, probs


def classifier_scorer(checkpoint: str | Path, device: torch.device | str = "cpu", batch_size: int = 256,
                      ema: bool = True) -> Scorer:
    """Features (pre-logits) and softmax probabilities of a classifier checkpoint of this package (its EMA
    weights unless `ema=False`)."""
    from ...engine.distributed import resolve_device
    from ...models import read_state_dict
    from ..classification.data import eval_transform
    from ..classification.evaluate import load_classifier

    task = read_state_dict(checkpoint).get("task")
    if task not in (None, "classification"):
        raise ValueError(f"{checkpoint} is a {task} checkpoint; --classifier takes a classifier's (from "
                         "`weightformer train`).")
    device = resolve_device(device)
    model, info = load_classifier(checkpoint, ema=ema, device=device)
    transform = eval_transform(info["img_size"], info["crop_pct"], info["interpolation"])

    @torch.no_grad()
    def run(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        features, probs = [], []
        for start in range(0, len(images), batch_size):
            x = torch.stack([transform(Image.fromarray(im)) for im in images[start:start + batch_size]])
            f = model.forward_head(model.forward_features(x.to(device)), pre_logits=True)  # (B, C)
            features.append(f.double().cpu().numpy())
            probs.append(model.get_classifier()(f).softmax(-1).double().cpu().numpy())
        return np.concatenate(features), np.concatenate(probs)

    return run


def inception_scorer(device: torch.device | str = "cpu", batch_size: int = 64) -> Scorer:
    """Inception-v3 pool3 features and its (unbiased) softmax, weights from the local torch hub cache only."""
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError:
        raise ValueError("Inception metrics need torch-fidelity: pip install \"weightformer[generation]\" (or "
                         "score in a classifier's feature space with --classifier CKPT).") from None
    path = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS
    if not path.is_file():
        raise ValueError(f"Inception weights are not cached at {path} (no download here): fetch {_INCEPTION_URL} "
                         "there on a machine with network, or score with --classifier CKPT.")
    net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                      feature_extractor_weights_path=str(path)).to(device)

    @torch.no_grad()
    def run(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        features, probs = [], []
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(images[start:start + batch_size]).permute(0, 3, 1, 2).contiguous().to(device)
            f, logits = net(x)
            features.append(f.double().cpu().numpy())
            probs.append(logits.double().softmax(-1).cpu().numpy())
        return np.concatenate(features), np.concatenate(probs)

    return run


def score(samples: np.ndarray, reference: np.ndarray, scorer: Scorer, labels: np.ndarray | None = None,
          splits: int = 10) -> dict[str, Any]:
    """FID of samples against reference, IS of the samples (and of the reference), and, given the samples'
    conditioning labels and a scorer whose classes are theirs, the share classified as their label (%)."""
    features, probs = scorer(samples)
    ref_features, ref_probs = scorer(reference)
    result = {"fid": frechet_distance(*gaussian_stats(features), *gaussian_stats(ref_features)),
              "is": inception_score(probs, splits)[0], "is_std": inception_score(probs, splits)[1],
              "reference_is": inception_score(ref_probs, splits)[0], "samples": len(samples),
              "reference": len(reference)}
    if labels is not None:
        result["accuracy"] = 100.0 * float((probs.argmax(1) == np.asarray(labels)).mean())
    return result
