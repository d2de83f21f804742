"""FID, sFID, Inception Score and precision / recall of generated images, and the feature spaces they are taken in.

    FID  = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))     (Heusel et al., 2017), pooled features of two sets
    sFID = the same of spatial features                         (Nash et al., 2021; ADM's evaluator: the first 7
                                                                 channels of Inception's mixed_6/conv, 7x17x17)
    IS   = exp(E_x KL(p(y|x) || p(y)))                          (Salimans et al., 2016), mean and std over splits
    precision = share of samples inside the reference manifold, recall = share of reference images inside the
    samples' manifold, a manifold being the union of balls reaching each vector's k-th nearest neighbour
    (Kynkäänniemi et al., 2019; k = 3 as in ADM's evaluator and torch-fidelity)

Every statistic is gathered batch by batch (`RunningGaussian`, `RunningInceptionScore`) and the k-NN distances are
taken in blocks, so no step holds all images, nor an N x N distance matrix (50,000² float32 would be 10 GB).

Features of a classifier checkpoint of this package are its pre-logits (pooled, normed tokens) and its softmax
gives the class probabilities, so generation is scored with no download. Inception-v3 (torch-fidelity's port of
the TensorFlow network the papers use: pool3 2048-d features, 1008 logits, and mixed_6/conv for sFID) is loaded
from the local torch hub cache only; a missing file is said in one line with the command that fetches it elsewhere.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .images import load_images  # noqa: F401  (its former home: `from .metrics import load_images` keeps working)

__all__ = ["frechet_distance", "gaussian_stats", "RunningGaussian", "inception_score", "RunningInceptionScore",
           "knn_radii", "precision_recall", "Extractor", "classifier_scorer", "inception_scorer", "INCEPTION_KEY",
           "INCEPTION_WEIGHTS"]

INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"
_INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS}"
INCEPTION_KEY = "inception-v3-torch-fidelity"  # pool3 2048, mixed_6/conv[:7] 2023 (ADM's layout), logits 1008
SPATIAL_CHANNELS = 7  # ADM's evaluator keeps the first 7 of mixed_6/conv's 192 channels: 7 x 17 x 17 = 2023


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """features (N, D) -> mean (D,) and unbiased covariance (D, D), in float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"FID needs at least 2 feature vectors, got an array of shape {features.shape}.")
    return features.mean(axis=0), np.cov(features, rowvar=False)


class RunningGaussian:
    """Mean and unbiased covariance of feature vectors given in batches, in float64: what `gaussian_stats` gives
    of all of them at once, without holding them. Batches are merged by Chan et al.'s pairwise update (centred
    scatter matrices, not raw second moments, which lose digits when the mean is large against the spread)."""

    def __init__(self, dim: int):
        self.count, self.mean, self.scatter = 0, np.zeros(dim), np.zeros((dim, dim))

    def update(self, features: np.ndarray) -> None:
        x = np.asarray(features, dtype=np.float64)
        if len(x) == 0:
            return
        batch_mean = x.mean(axis=0)
        centred = x - batch_mean
        delta, total = batch_mean - self.mean, self.count + len(x)
        self.scatter += centred.T @ centred + np.outer(delta, delta) * (self.count * len(x) / total)
        self.mean += delta * (len(x) / total)
        self.count = total

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        if self.count < 2:
            raise ValueError(f"FID needs at least 2 feature vectors, got {self.count}.")
        return self.mean.copy(), self.scatter / (self.count - 1)


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


class RunningInceptionScore:
    """The Inception Score of `total` probability vectors given in batches, over `splits` equal parts (those of
    np.array_split). Per part, E_x KL(p(y|x) || p(y)) = E_x[sum_y p log p] - sum_y p(y) log p(y) with p(y) the
    part's mean, so a part needs only its count, its summed p and its summed p log p."""

    def __init__(self, total: int, splits: int = 10):
        splits = max(1, min(splits, total))
        sizes = [total // splits + (1 if i < total % splits else 0) for i in range(splits)]  # np.array_split's
        self.ends = np.cumsum(sizes)
        self.seen = 0
        self.sums: list[np.ndarray | None] = [None] * splits
        self.plogp = np.zeros(splits)

    def update(self, probs: np.ndarray) -> None:
        probs = np.asarray(probs, dtype=np.float64)
        while len(probs):
            part = int(np.searchsorted(self.ends, self.seen, side="right"))
            take = min(len(probs), int(self.ends[part]) - self.seen)
            chunk, probs = probs[:take], probs[take:]
            total = chunk.sum(axis=0)
            self.sums[part] = total if self.sums[part] is None else self.sums[part] + total
            self.plogp[part] += (chunk * np.log(np.clip(chunk, 1e-30, None))).sum()
            self.seen += take

    def result(self) -> tuple[float, float]:
        if self.seen != self.ends[-1]:
            raise ValueError(f"The Inception Score was given {self.seen} of {self.ends[-1]} probability vectors.")
        counts = np.diff(self.ends, prepend=0)
        scores = []
        for count, total, plogp in zip(counts, self.sums, self.plogp, strict=True):
            marginal = total / count
            scores.append(np.exp(plogp / count - (marginal * np.log(np.clip(marginal, 1e-30, None))).sum()))
        return float(np.mean(scores)), float(np.std(scores))


def inception_score(probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """probs (N, K) class probabilities -> (mean, std) over `splits` equal parts of exp(E KL(p(y|x) || p(y)))."""
    running = RunningInceptionScore(len(probs), splits)
    running.update(probs)
    return running.result()


def _squared_distances(a: torch.Tensor, a_norms: torch.Tensor, b: torch.Tensor,
                       b_norms: torch.Tensor) -> torch.Tensor:
    """(len(a), len(b)) squared Euclidean distances ||a||² + ||b||² - 2 a.b, clamped at 0 (as ADM's evaluator)."""
    return (a_norms[:, None] + b_norms[None, :] - 2 * a @ b.T).clamp_(min=0)


def _squared_norms(x: torch.Tensor, block: int) -> torch.Tensor:
    """(N,) squared norms of the rows, a block at a time: x * x whole would be another copy of the features."""
    return torch.cat([(rows * rows).sum(dim=1) for rows in x.split(block)])


def knn_radii(features: torch.Tensor, k: int = 3, block: int = 2048) -> torch.Tensor:
    """The squared distance of each vector (N, D) to its k-th nearest other vector: the radius of its ball in
    the manifold estimate. A vector is its own nearest (distance 0), so it is the (k+1)-th smallest distance,
    as in ADM's evaluator and torch-fidelity. Blocks of `block` x `block` distances, keeping each row's k+1
    smallest so far: memory O(N k + block²)."""
    if len(features) <= k:
        raise ValueError(f"Precision and recall with k = {k} need more than {k} feature vectors in each set, got "
                         f"{len(features)}.")
    norms = _squared_norms(features, block)
    radii = torch.empty(len(features), dtype=features.dtype, device=features.device)
    for start in range(0, len(features), block):
        rows, row_norms = features[start:start + block], norms[start:start + block]
        nearest = None
        for col in range(0, len(features), block):
            d = _squared_distances(rows, row_norms, features[col:col + block], norms[col:col + block])
            d = d if nearest is None else torch.cat([nearest, d], dim=1)
            nearest = d.topk(min(k + 1, d.shape[1]), dim=1, largest=False).values
        radii[start:start + len(rows)] = nearest[:, k]
    return radii


def precision_recall(samples: np.ndarray | torch.Tensor, reference: np.ndarray | torch.Tensor, k: int = 3,
                     block: int = 2048, device: torch.device | str = "cpu") -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al., 2019) of sample features (N, D) against reference
    features (M, D): the share of samples within distance radius(r) of some reference vector r, and the share of
    reference vectors within radius(s) of some sample s, radii from each set's k-th nearest neighbour. Distances
    in blocks, in the features' dtype (float32 as ADM's evaluator and torch-fidelity; float64 in the tests)."""
    x = torch.as_tensor(samples).to(device)
    y = torch.as_tensor(reference).to(device)
    if x.shape[1:] != y.shape[1:]:
        raise ValueError(f"Precision/recall features of different sizes: {tuple(x.shape)} and {tuple(y.shape)}.")
    radii_x, radii_y = knn_radii(x, k, block), knn_radii(y, k, block)
    norms_x, norms_y = _squared_norms(x, block), _squared_norms(y, block)
    in_reference = torch.zeros(len(x), dtype=torch.bool, device=x.device)  # sample inside the reference manifold
    in_samples = torch.zeros(len(y), dtype=torch.bool, device=x.device)  # reference inside the samples' manifold
    for i in range(0, len(x), block):
        for j in range(0, len(y), block):
            d = _squared_distances(x[i:i + block], norms_x[i:i + block], y[j:j + block], norms_y[j:j + block])
            in_reference[i:i + block] |= (d <= radii_y[None, j:j + block]).any(dim=1)
            in_samples[j:j + block] |= (d <= radii_x[i:i + block, None]).any(dim=0)
    return in_reference.double().mean().item(), in_samples.double().mean().item()


@dataclass
class Extractor:
    """A feature space: what `dit fid` computes of each batch of uint8 (B, H, W, 3) images.

    `run` returns float64 arrays (B, dims[name]): "pool" (FID, precision/recall), "probs" (IS) and, in
    Inception's space only, "spatial" (sFID). `key` names the space, and statistics cached in another are
    refused. Called on all images at once it returns (pool features, probs), batch by batch."""

    key: str
    name: str
    dims: dict[str, int]
    run: Callable[[np.ndarray], dict[str, np.ndarray]]
    batch_size: int = 64
    device: torch.device = torch.device("cpu")

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        parts = [self.run(images[i:i + self.batch_size]) for i in range(0, len(images), self.batch_size)]
        return np.concatenate([p["pool"] for p in parts]), np.concatenate([p["probs"] for p in parts])


def _file_digest(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def classifier_scorer(checkpoint: str | Path, device: torch.device | str = "cpu", batch_size: int = 256,
                      ema: bool = True) -> Extractor:
    """Features (pre-logits) and softmax probabilities of a classifier checkpoint of this package (its EMA
    weights unless `ema=False`). The key is the file's SHA-256 and the weights taken: another checkpoint, or
    the same one's other weights, is another feature space."""
    from ...engine.distributed import resolve_device
    from ...models import read_state_dict
    from ..classification.data import eval_transform
    from ..classification.evaluate import load_classifier

    state = read_state_dict(checkpoint)
    task = state.get("task")
    if task not in (None, "classification"):
        raise ValueError(f"{checkpoint} is a {task} checkpoint; --classifier takes a classifier's (from "
                         "`weightformer train`).")
    weights = "ema" if ema and state.get("ema") is not None else "trained"
    device = resolve_device(device)
    model, info = load_classifier(checkpoint, ema=ema, device=device)
    transform = eval_transform(info["img_size"], info["crop_pct"], info["interpolation"])

    @torch.no_grad()
    def run(images: np.ndarray) -> dict[str, np.ndarray]:
        x = torch.stack([transform(Image.fromarray(im)) for im in images])
        f = model.forward_head(model.forward_features(x.to(device)), pre_logits=True)  # (B, C)
        return {"pool": f.double().cpu().numpy(),
                "probs": model.get_classifier()(f).softmax(-1).double().cpu().numpy()}

    probe = run(np.zeros((1, info["img_size"], info["img_size"], 3), np.uint8))  # the dimensions, on one image
    return Extractor(f"classifier:{_file_digest(checkpoint)[:16]}:{weights}", f"classifier {checkpoint}",
                     {name: value.shape[1] for name, value in probe.items()}, run, batch_size, device)


def inception_scorer(device: torch.device | str = "cpu", batch_size: int = 64) -> Extractor:
    """Inception-v3 pool3 features, its (unbiased) softmax and the spatial features of sFID, weights from the
    local torch hub cache only."""
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError:
        raise ValueError("Inception metrics need torch-fidelity: pip install \"weightformer[generation]\" (or "
                         "score in a classifier's feature space with --classifier CKPT).") from None
    from ...engine.distributed import resolve_device

    path = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS
    if not path.is_file():
        raise ValueError(f"Inception weights are not cached at {path} (no download here): fetch {_INCEPTION_URL} "
                         "there on a machine with network, or score with --classifier CKPT.")
    device = resolve_device(device)
    net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                      feature_extractor_weights_path=str(path)).to(device)
    spatial: list[torch.Tensor] = []
    # TensorFlow's mixed_6/conv is torch-fidelity's Mixed_6d.branch1x1 (conv, batch norm, ReLU); ADM takes its
    # first 7 channels in TensorFlow's NHWC order, flattened: the same order here, so ADM's mu_s / sigma_s apply.
    net.Mixed_6d.branch1x1.register_forward_hook(lambda module, args, out: spatial.append(out))

    @torch.no_grad()
    def run(images: np.ndarray) -> dict[str, np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous().to(device)
        f, logits = net(x)
        s = spatial.pop().permute(0, 2, 3, 1)[..., :SPATIAL_CHANNELS].reshape(len(x), -1)
        return {"pool": f.double().cpu().numpy(), "probs": logits.double().softmax(-1).cpu().numpy(),
                "spatial": s.double().cpu().numpy()}

    dims = {"pool": 2048, "probs": 1008, "spatial": SPATIAL_CHANNELS * 17 * 17}
    return Extractor(INCEPTION_KEY, "Inception-v3", dims, run, batch_size, device)
