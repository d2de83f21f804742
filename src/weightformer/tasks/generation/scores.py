"""`weightformer dit fid`: image sets reduced to statistics in one streaming pass, cached reference statistics,
ADM's reference batches, and the scores between two sets.

A set of images becomes `SetStats` in one pass over its batches: the pooled features' mean and covariance (FID),
the spatial features' (sFID, Inception only), the Inception Score, and the pooled features of evenly spaced images
kept for precision/recall. Nothing else of the images stays in memory.

A reference is images (`images.open_images`), a statistics file written by `--save-stats`, or one of ADM's
reference batches (guided-diffusion's evaluations/README: VIRTUAL_imagenet256_labeled.npz and the like):

    statistics file   extractor (the feature space's key), mu, sigma, mu_s, sigma_s (Inception only), features
                      (float32, for precision/recall), images (how many images the statistics cover)
    ADM batch         arr_0 (uint8 images, here 10,000), mu, sigma, mu_s, sigma_s of TensorFlow's Inception-v3 over
                      the whole training set; no key: its statistics are used in Inception's space (torch-fidelity's
                      port of the same network) and its images give the precision/recall features, as ADM's
                      evaluator does; in a classifier's space its images are scored instead.

A statistics file of another feature space, or of another dimension, is refused in one line.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .images import ImageSet, NpzImages, open_images
from .metrics import (
    INCEPTION_KEY,
    Extractor,
    RunningGaussian,
    RunningInceptionScore,
    frechet_distance,
    precision_recall,
)

__all__ = ["SetStats", "Reference", "kept_indices", "compute_stats", "save_stats", "open_reference", "score_sets",
           "PRC_FEATURES"]

PRC_FEATURES = 10_000  # reference images kept for precision/recall: the size of ADM's reference batches
PRC_NEIGHBOURS = 3  # k of the k-NN balls (Kynkäänniemi et al.; ADM's evaluator and torch-fidelity use 3)


@dataclass
class SetStats:
    """What the scores need of one image set. `images`: how many images the statistics cover (None: unknown)."""

    images: int | None
    mu: np.ndarray
    sigma: np.ndarray
    mu_s: np.ndarray | None = None
    sigma_s: np.ndarray | None = None
    features: np.ndarray | None = None  # float32 (K, D), pooled features of K images, for precision/recall
    inception_score: tuple[float, float] | None = None
    accuracy: float | None = None
    kind: str = "images"  # "images", "statistics" (a --save-stats file) or "ADM reference batch"


@dataclass
class Reference:
    """An opened reference: statistics read from a file, images to compute them from, or both (an ADM batch in
    Inception's space: its statistics, and its images for precision/recall)."""

    path: Path
    stats: SetStats | None = None
    images: ImageSet | None = None
    notes: list[str] = field(default_factory=list)


def kept_indices(total: int, keep: int | None) -> np.ndarray:
    """Indices of the images whose features are kept: all (keep None), or min(keep, total) evenly spaced."""
    if keep is None or keep >= total:
        return np.arange(total)
    return (np.arange(keep) * total) // keep


def compute_stats(images: ImageSet, extractor: Extractor, keep: int | None = 0, labels: np.ndarray | None = None,
                  splits: int = 10, progress: bool = False) -> SetStats:
    """One pass over `images`: FID (and sFID) statistics, IS, the pooled features of `keep` evenly spaced images
    (None: all) and, given the images' class ids and a classifier's space, the share classified as their label."""
    from tqdm import tqdm

    total = len(images)
    if labels is not None and len(labels) != total:
        raise ValueError(f"{images.path}: {len(labels)} labels (arr_1) for {total} images.")
    pool = RunningGaussian(extractor.dims["pool"])
    spatial = RunningGaussian(extractor.dims["spatial"]) if "spatial" in extractor.dims else None
    isc = RunningInceptionScore(total, splits)
    kept = kept_indices(total, keep)
    features = np.empty((len(kept), extractor.dims["pool"]), np.float32)
    seen = correct = 0
    bar = tqdm(total=total, desc=f"features of {images.path.name}", unit="img", disable=not progress, leave=False)
    for batch in images.batches(extractor.batch_size):
        out = extractor.run(batch)
        pool.update(out["pool"])
        if spatial is not None:
            spatial.update(out["spatial"])
        isc.update(out["probs"])
        lo, hi = np.searchsorted(kept, [seen, seen + len(batch)])
        features[lo:hi] = out["pool"][kept[lo:hi] - seen]
        if labels is not None:
            correct += int((out["probs"].argmax(1) == labels[seen:seen + len(batch)]).sum())
        seen += len(batch)
        bar.update(len(batch))
    bar.close()
    stats = SetStats(total, *pool.stats(), features=features if len(kept) else None,
                     inception_score=isc.result(), accuracy=None if labels is None else 100.0 * correct / total)
    if spatial is not None:
        stats.mu_s, stats.sigma_s = spatial.stats()
    return stats


def save_stats(path: str | Path, stats: SetStats, extractor: Extractor) -> None:
    """Write `stats` as a statistics file of `extractor`'s space, atomically (a temporary file renamed)."""
    path = Path(path)
    arrays: dict[str, Any] = {"extractor": np.str_(extractor.key), "mu": stats.mu, "sigma": stats.sigma}
    for name in ("mu_s", "sigma_s", "features"):
        if getattr(stats, name) is not None:
            arrays[name] = getattr(stats, name)
    if stats.images is not None:
        arrays["images"] = np.int64(stats.images)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def open_reference(path: str | Path, extractor: Extractor) -> Reference:
    """A reference: images, a statistics file of `extractor`'s space, or an ADM reference batch (see the module's
    docstring). Only the small arrays are read; a reference that cannot be scored in this space is refused."""
    path = Path(path)
    if not (path.is_file() and path.suffix == ".npz"):
        return Reference(path, images=open_images(path))
    try:
        with np.load(path) as npz:
            names = set(npz.files)
            small = {n: npz[n] for n in ("extractor", "mu", "sigma", "mu_s", "sigma_s", "features", "images")
                     if n in names}
    except (ValueError, OSError, EOFError) as error:
        raise ValueError(f"{path} is not a readable npz ({type(error).__name__}: {error}).") from None
    if "mu" not in small and "sigma" not in small:
        if "arr_0" in names:
            return Reference(path, images=NpzImages(path))
        raise ValueError(f"{path} holds neither images (arr_0) nor statistics (mu and sigma); it holds "
                         f"{', '.join(sorted(names)) or 'nothing'}.")
    if "mu" not in small or "sigma" not in small:
        raise ValueError(f"{path} holds {'mu' if 'mu' in small else 'sigma'} but not "
                         f"{'sigma' if 'mu' in small else 'mu'}: statistics need both.")
    if "extractor" in small:
        return Reference(path, stats=_our_stats(path, small, extractor))
    return _adm_reference(path, small, "arr_0" in names, extractor)


def _check_dims(path: Path, small: dict[str, np.ndarray], extractor: Extractor) -> None:
    d = extractor.dims["pool"]
    if small["mu"].shape != (d,) or small["sigma"].shape != (d, d):
        raise ValueError(f"{path} holds statistics of {small['mu'].shape[-1] if small['mu'].ndim else 1}-d features; "
                         f"{extractor.name}'s features are {d}-d.")
    if "features" in small and small["features"].shape[1:] != (d,):
        raise ValueError(f"{path}: its precision/recall features are of shape {small['features'].shape}, not (K, "
                         f"{d}).")
    ds = extractor.dims.get("spatial")
    if "mu_s" in small and ds is not None and (small["mu_s"].shape != (ds,) or small["sigma_s"].shape != (ds, ds)):
        raise ValueError(f"{path} holds spatial statistics of {small['mu_s'].shape[-1]}-d features; {extractor.name}'s"
                         f" spatial features (sFID) are {ds}-d.")


def _our_stats(path: Path, small: dict[str, np.ndarray], extractor: Extractor) -> SetStats:
    stored = str(small["extractor"])
    if stored != extractor.key:
        raise ValueError(f"{path} holds statistics of {stored} features; this run scores with {extractor.key} "
                         f"({extractor.name}): compute the reference's statistics again with --save-stats.")
    _check_dims(path, small, extractor)
    spatial = "spatial" in extractor.dims and "mu_s" in small and "sigma_s" in small
    return SetStats(int(small["images"]) if "images" in small else None, small["mu"], small["sigma"],
                    small["mu_s"] if spatial else None, small["sigma_s"] if spatial else None,
                    small.get("features"), kind="statistics")


def _adm_reference(path: Path, small: dict[str, np.ndarray], has_images: bool, extractor: Extractor) -> Reference:
    if extractor.key != INCEPTION_KEY:
        if not has_images:
            raise ValueError(f"{path} holds Inception-v3 statistics (ADM's reference batch layout) and no images: "
                             f"it can be scored in Inception's space only (without --classifier).")
        return Reference(path, images=NpzImages(path), notes=[
            "the reference's mu/sigma are Inception-v3's: its images were scored in this feature space instead"])
    _check_dims(path, small, extractor)
    spatial = "mu_s" in small and "sigma_s" in small
    stats = SetStats(None, small["mu"], small["sigma"], small["mu_s"] if spatial else None,
                     small["sigma_s"] if spatial else None, kind="ADM reference batch")
    return Reference(path, stats=stats, images=NpzImages(path) if has_images else None)


def reference_stats(reference: Reference, extractor: Extractor, prc_features: int, splits: int = 10,
                    progress: bool = False) -> SetStats:
    """The reference's statistics: read, computed from its images, or (an ADM batch) read with the
    precision/recall features computed from its images."""
    if reference.stats is None:
        return compute_stats(reference.images, extractor, prc_features, splits=splits, progress=progress)
    stats = reference.stats
    if stats.features is None and reference.images is not None and prc_features > 0:
        from_images = compute_stats(reference.images, extractor, prc_features, splits=splits, progress=progress)
        stats.features, stats.inception_score = from_images.features, from_images.inception_score
    return stats


def _check_writable(path: str | Path | None) -> None:
    """Refuse an output path that cannot be written before hours of features are computed, not after."""
    if path is None:
        return
    parent = Path(path).resolve().parent
    if not parent.is_dir():
        raise ValueError(f"{Path(path).parent} is not a folder: {path} cannot be written.")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"{parent} is not writable: {path} cannot be written.")


def score_sets(samples: str | Path | None, reference: str | Path, extractor: Extractor, use_labels: bool = False,
               splits: int = 10, prc_features: int = PRC_FEATURES, save: str | Path | None = None,
               output: str | Path | None = None, progress: bool = False) -> dict[str, Any]:
    """FID, sFID, IS, precision and recall of `samples` against `reference` (and the samples' accuracy under
    their labels with `use_labels`); with `save`, the reference's statistics are written there first. Without
    samples only the statistics are computed and saved. Every input is opened and checked before any feature is
    computed."""
    if prc_features < 0:
        raise ValueError(f"--prc-features must be 0 (no precision/recall) or more, got {prc_features}.")
    for path in (save, output):
        _check_writable(path)
    sample_set = open_images(samples) if samples is not None else None
    ref = open_reference(reference, extractor)
    labels = sample_set.labels() if sample_set is not None and use_labels else None
    start = time.perf_counter()
    ref_stats = reference_stats(ref, extractor, prc_features, splits, progress)
    if save is not None:
        save_stats(save, ref_stats, extractor)
    result: dict[str, Any] = {"reference": ref_stats.images, "reference_kind": ref_stats.kind,
                              "extractor": extractor.key, "space": extractor.name, "notes": ref.notes}
    if ref_stats.inception_score is not None and ref.stats is None:
        result["reference_is"] = ref_stats.inception_score[0]
    if save is not None:
        result["saved_stats"] = str(save)
    if sample_set is not None:
        keep = None if prc_features > 0 and ref_stats.features is not None else 0
        sample_stats = compute_stats(sample_set, extractor, keep, labels, splits, progress)
        result.update(_compare(sample_stats, ref_stats, extractor, result["notes"]))
    result["seconds"] = time.perf_counter() - start
    return result


def _compare(samples: SetStats, reference: SetStats, extractor: Extractor, notes: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"fid": frechet_distance(samples.mu, samples.sigma, reference.mu, reference.sigma),
                           "sfid": None, "is": samples.inception_score[0], "is_std": samples.inception_score[1],
                           "precision": None, "recall": None, "samples": samples.images, "prc_reference": 0}
    if samples.mu_s is not None and reference.mu_s is not None:
        out["sfid"] = frechet_distance(samples.mu_s, samples.sigma_s, reference.mu_s, reference.sigma_s)
    if samples.features is not None and reference.features is not None:
        if min(len(samples.features), len(reference.features)) <= PRC_NEIGHBOURS:
            notes.append(f"no precision/recall: its k-th nearest neighbours (k = {PRC_NEIGHBOURS}) need more than "
                         f"{PRC_NEIGHBOURS} images in each set")
        else:
            out["precision"], out["recall"] = precision_recall(samples.features, reference.features,
                                                               PRC_NEIGHBOURS, device=extractor.device)
            out["prc_reference"] = len(reference.features)
    if samples.accuracy is not None:
        out["accuracy"] = samples.accuracy
    return out
