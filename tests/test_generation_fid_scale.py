"""FID at scale: statistics gathered batch by batch equal those of all features at once, sFID and precision/recall
against float64 statements of their formulas (and torch-fidelity's precision/recall), lazy image sets (npz, folder,
shard list), cached reference statistics, ADM's reference batches, and one-line refusals of what does not fit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.distance import cdist

from weightformer.cli.main import main
from weightformer.tasks.generation.images import NpzWriter, load_images, open_images
from weightformer.tasks.generation.metrics import (
    INCEPTION_KEY,
    Extractor,
    RunningGaussian,
    RunningInceptionScore,
    frechet_distance,
    gaussian_stats,
    inception_score,
    knn_radii,
    precision_recall,
)
from weightformer.tasks.generation.scores import compute_stats, kept_indices, open_reference, save_stats, score_sets


def _fake_extractor(key: str = "fake", batch_size: int = 5) -> Extractor:
    """A cheap feature space with Inception's three outputs: pool (quadrant colour means, 12-d), spatial (a 3x3
    grey grid, 9-d) and probs (a softmax over 4 classes)."""
    rng = np.random.default_rng(7)
    head = rng.normal(size=(12, 4))

    def run(images: np.ndarray) -> dict[str, np.ndarray]:
        x = images.astype(np.float64) / 255
        h, w = x.shape[1] // 2, x.shape[2] // 2
        pool = np.concatenate([x[:, i * h:(i + 1) * h, j * w:(j + 1) * w].mean(axis=(1, 2))
                               for i in range(2) for j in range(2)], axis=1) ** 1.5
        grey = x.mean(axis=3)
        spatial = np.stack([grey[:, i::3, j::3].mean(axis=(1, 2)) for i in range(3) for j in range(3)], axis=1)
        logits = pool @ head * 4
        probs = np.exp(logits - logits.max(1, keepdims=True))
        return {"pool": pool, "spatial": spatial, "probs": probs / probs.sum(1, keepdims=True)}

    return Extractor(key, f"fake ({key})", {"pool": 12, "spatial": 9, "probs": 4}, run, batch_size)


def _images(n: int, seed: int, size: tuple[int, int] = (9, 7)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, 1, 1, 3))
    return np.clip(base + rng.integers(-60, 60, (n, *size, 3)), 0, 255).astype(np.uint8)


def _write_folder(folder, images) -> None:
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:03d}.png")


# --- formulas -------------------------------------------------------------------------------------------------


def test_running_gaussian_equals_the_covariance_of_all_features_at_once():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(103, 6)) * [1, 2, 3, 4, 5, 6] + 1e4  # a mean far from 0: raw moments would lose digits
    running = RunningGaussian(6)
    for part in np.split(x, [1, 8, 8, 50, 97]):  # uneven batches, an empty one, one of a single vector
        running.update(part)
    mu, sigma = running.stats()
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-14)
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False), rtol=1e-9)
    with pytest.raises(ValueError, match="at least 2 feature vectors, got 1"):
        one = RunningGaussian(6)
        one.update(x[:1])
        one.stats()


def test_running_inception_score_over_uneven_batches_equals_the_one_pass_formula():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(5) * 0.3, size=37)
    running = RunningInceptionScore(37, splits=4)
    for part in np.split(probs, [3, 10, 11, 30]):  # batches that straddle the splits' ends
        running.update(part)
    parts = np.array_split(probs, 4)
    expected = [np.exp(np.mean([(p * (np.log(p) - np.log(part.mean(0)))).sum() for p in part])) for part in parts]
    assert running.result()[0] == pytest.approx(np.mean(expected), rel=1e-12)
    assert running.result()[1] == pytest.approx(np.std(expected), rel=1e-9)
    assert inception_score(probs, splits=4) == pytest.approx(running.result(), rel=1e-12)


def _brute_force_precision_recall(samples: np.ndarray, reference: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Kynkäänniemi et al.'s definitions written out in float64: r(v) = distance from v to its k-th nearest
    neighbour in its own set; precision = share of samples s with d(s, r) <= r(r) for some reference r; recall =
    share of reference r with d(r, s) <= r(s) for some sample s."""
    def radii(x):
        d = cdist(x, x)
        return np.sort(d, axis=1)[:, k]  # column 0 is the vector itself

    d = cdist(samples, reference)
    precision = np.mean([(d[i] <= radii(reference)).any() for i in range(len(samples))])
    recall = np.mean([(d[:, j] <= radii(samples)).any() for j in range(len(reference))])
    return float(precision), float(recall)


@pytest.mark.parametrize("n, m, d, scale", [(37, 53, 11, 1.3), (60, 23, 5, 0.6)])
def test_precision_recall_against_a_float64_brute_force_and_torch_fidelity(n, m, d, scale):
    rng = np.random.default_rng(n)
    samples = rng.normal(size=(n, d)) * scale + 0.4
    reference = rng.normal(size=(m, d))
    expected = _brute_force_precision_recall(samples, reference)
    assert 0 < expected[0] < 1 and 0 < expected[1] < 1  # neither trivial
    for block in (7, 2048):  # many blocks, and one
        ours = precision_recall(torch.from_numpy(samples), torch.from_numpy(reference), block=block)
        assert ours == pytest.approx(expected, abs=1e-12)
    ours32 = precision_recall(samples.astype(np.float32), reference.astype(np.float32), block=16)
    assert ours32 == pytest.approx(expected, abs=1e-12)
    prc = pytest.importorskip("torch_fidelity.metric_prc")
    theirs = prc.calculate_precision_recall_full(torch.from_numpy(samples).float(), torch.from_numpy(reference).float())
    assert ours32 == pytest.approx(theirs, abs=1e-6)  # theirs is a float32 mean: the same count of vectors


def test_knn_radii_in_blocks_are_the_kth_neighbour_distances():
    x = np.random.default_rng(3).normal(size=(29, 4))
    expected = np.sort(cdist(x, x), axis=1)[:, 3] ** 2
    np.testing.assert_allclose(knn_radii(torch.from_numpy(x), 3, block=5).numpy(), expected, rtol=1e-10)
    with pytest.raises(ValueError, match="need more than 3 feature vectors in each set, got 3"):
        knn_radii(torch.from_numpy(x[:3]))


# --- image sets ---------------------------------------------------------------------------------------------------


def test_npz_folder_and_shard_list_read_lazily_give_the_same_images(tmp_path):
    images = _images(23, 0)
    np.savez(tmp_path / "all.npz", images, np.arange(23))
    np.savez_compressed(tmp_path / "a.npz", images[:10], np.arange(10))  # a compressed member streams too
    with NpzWriter(tmp_path / "b.npz", 13, images.shape[1:]) as out:
        out.write(images[10:15])
        out.write(images[15:])
        out.put("arr_1", np.arange(10, 23))
    (tmp_path / "list.txt").write_text("# two shards\na.npz\n\nb.npz\n")
    _write_folder(tmp_path / "folder" / "x", images)
    for source in ("all.npz", "list.txt", "folder"):
        opened = open_images(tmp_path / source)
        assert len(opened) == 23
        batches = list(opened.batches(4))
        assert max(len(b) for b in batches) <= 4 and all(b.flags.writeable for b in batches)
        assert np.array_equal(np.concatenate(batches), images), source
    assert open_images(tmp_path / "list.txt").labels().tolist() == list(range(23))
    assert open_images(tmp_path / "folder").labels() is None


def test_npz_writer_leaves_nothing_when_interrupted_or_short(tmp_path):
    with pytest.raises(ValueError, match="3 images written of the 5 announced"), \
            NpzWriter(tmp_path / "short.npz", 5, (2, 2, 3)) as out:
        out.write(np.zeros((3, 2, 2, 3), np.uint8))
    with pytest.raises(KeyboardInterrupt), NpzWriter(tmp_path / "stopped.npz", 5, (2, 2, 3)) as out:
        out.write(np.zeros((3, 2, 2, 3), np.uint8))
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


# --- statistics ---------------------------------------------------------------------------------------------------


def test_streaming_statistics_equal_the_in_memory_ones(tmp_path):
    images, extractor = _images(41, 1), _fake_extractor(batch_size=6)
    np.savez(tmp_path / "s.npz", images)
    stats = compute_stats(open_images(tmp_path / "s.npz"), extractor, keep=None, splits=3)
    whole = extractor.run(images)
    mu, sigma = gaussian_stats(whole["pool"])
    np.testing.assert_allclose(stats.mu, mu, rtol=1e-12)
    np.testing.assert_allclose(stats.sigma, sigma, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(stats.sigma_s, np.cov(whole["spatial"], rowvar=False), rtol=1e-9, atol=1e-15)
    assert stats.inception_score == pytest.approx(inception_score(whole["probs"], 3), rel=1e-12)
    np.testing.assert_array_equal(stats.features, whole["pool"].astype(np.float32))
    kept = compute_stats(open_images(tmp_path / "s.npz"), extractor, keep=10).features
    np.testing.assert_array_equal(kept, whole["pool"][kept_indices(41, 10)].astype(np.float32))
    assert kept_indices(41, 10).tolist() == [0, 4, 8, 12, 16, 20, 24, 28, 32, 36] and len(kept_indices(5, 10)) == 5


def test_scores_against_float64_statements_and_a_saved_reference_reproduces_them(tmp_path):
    samples, reference = _images(31, 2), _images(27, 3)
    extractor = _fake_extractor()
    np.savez(tmp_path / "samples.npz", samples)
    _write_folder(tmp_path / "ref", reference)
    result = score_sets(tmp_path / "samples.npz", tmp_path / "ref", extractor, splits=2,
                        save=tmp_path / "stats.npz")
    s, r = extractor.run(samples), extractor.run(reference)
    assert result["fid"] == pytest.approx(frechet_distance(*gaussian_stats(s["pool"]), *gaussian_stats(r["pool"])),
                                          rel=1e-9)
    assert result["sfid"] == pytest.approx(
        frechet_distance(*gaussian_stats(s["spatial"]), *gaussian_stats(r["spatial"])), rel=1e-9)
    expected = _brute_force_precision_recall(s["pool"].astype(np.float32), r["pool"].astype(np.float32))
    assert (result["precision"], result["recall"]) == pytest.approx(expected, abs=1e-12)
    assert result["is"] == pytest.approx(inception_score(s["probs"], 2)[0], rel=1e-12)
    assert result["samples"] == 31 and result["reference"] == 27 and result["prc_reference"] == 27
    with np.load(tmp_path / "stats.npz") as npz:
        assert str(npz["extractor"]) == "fake" and int(npz["images"]) == 27 and npz["features"].shape == (27, 12)
        assert npz["mu_s"].shape == (9,) and npz["sigma"].shape == (12, 12)
    cached = score_sets(tmp_path / "samples.npz", tmp_path / "stats.npz", extractor, splits=2)
    for key in ("fid", "sfid", "precision", "recall", "is", "reference", "prc_reference"):
        assert cached[key] == result[key], key  # the same numbers, to the bit
    assert cached["reference_kind"] == "statistics" and "reference_is" not in cached
    few = score_sets(tmp_path / "samples.npz", tmp_path / "ref", extractor, prc_features=5)
    assert few["prc_reference"] == 5 and few["fid"] == pytest.approx(result["fid"], rel=1e-12)
    none = score_sets(tmp_path / "samples.npz", tmp_path / "ref", extractor, prc_features=0)
    assert none["precision"] is None and none["recall"] is None
    np.savez(tmp_path / "three.npz", samples[:3])  # too few for 3rd nearest neighbours: FID alone, and a note
    three = score_sets(tmp_path / "three.npz", tmp_path / "ref", extractor)
    assert three["precision"] is None and three["fid"] > 0 and "need more than 3 images" in three["notes"][0]


def _adm_batch(path, images, extractor, with_images=True, shift=0.0):
    """A reference batch in ADM's layout: arr_0 images and mu, sigma, mu_s, sigma_s (here of another, larger
    set, as ADM's are of the whole training set: `shift` moves its mean away from the images')."""
    out = extractor.run(images)
    arrays = dict(mu=out["pool"].mean(0) + shift, sigma=np.cov(out["pool"], rowvar=False),
                  mu_s=out["spatial"].mean(0), sigma_s=np.cov(out["spatial"], rowvar=False))
    if with_images:
        arrays["arr_0"] = images
    np.savez(path, **arrays)
    return arrays


def test_adm_reference_batches_are_accepted(tmp_path):
    samples, reference = _images(33, 4), _images(25, 5)
    np.savez(tmp_path / "samples.npz", samples)
    inception_like = _fake_extractor(INCEPTION_KEY)  # ADM's statistics are Inception's: used in that space only
    adm = _adm_batch(tmp_path / "VIRTUAL_ref.npz", reference, inception_like, shift=0.5)
    result = score_sets(tmp_path / "samples.npz", tmp_path / "VIRTUAL_ref.npz", inception_like)
    s, r = inception_like.run(samples), inception_like.run(reference)
    assert result["fid"] == pytest.approx(frechet_distance(*gaussian_stats(s["pool"]), adm["mu"], adm["sigma"]),
                                          rel=1e-9)  # the file's statistics, not its images'
    assert result["sfid"] == pytest.approx(frechet_distance(*gaussian_stats(s["spatial"]), adm["mu_s"],
                                                            adm["sigma_s"]), rel=1e-9)
    expected = _brute_force_precision_recall(s["pool"].astype(np.float32), r["pool"].astype(np.float32))
    assert (result["precision"], result["recall"]) == pytest.approx(expected, abs=1e-12)  # from its images
    assert result["reference_kind"] == "ADM reference batch" and result["reference"] is None
    result = score_sets(tmp_path / "samples.npz", tmp_path / "VIRTUAL_ref.npz", inception_like,
                        save=tmp_path / "cached.npz")  # converted once to a statistics file, with its features
    cached = score_sets(tmp_path / "samples.npz", tmp_path / "cached.npz", inception_like)
    assert [cached[k] for k in ("fid", "sfid", "precision")] == [result[k] for k in ("fid", "sfid", "precision")]
    other = score_sets(tmp_path / "samples.npz", tmp_path / "VIRTUAL_ref.npz", _fake_extractor("classifier:x"))
    assert other["fid"] == pytest.approx(
        frechet_distance(*gaussian_stats(s["pool"]), *gaussian_stats(r["pool"])), rel=1e-9)  # its images, rescored
    assert "its images were scored in this feature space instead" in other["notes"][0]


def test_references_that_do_not_fit_are_refused(tmp_path):
    extractor = _fake_extractor()
    save_stats(tmp_path / "stats.npz", compute_stats(open_images(_npz(tmp_path, "r", 9)), extractor, 4), extractor)
    _adm_batch(tmp_path / "adm-stats-only.npz", _images(9, 6), _fake_extractor(INCEPTION_KEY), with_images=False)
    np.savez(tmp_path / "wrong-dim.npz", mu=np.zeros(5), sigma=np.eye(5))
    np.savez(tmp_path / "nothing.npz", labels=np.arange(3))
    np.savez(tmp_path / "mu-only.npz", mu=np.zeros(12))
    (tmp_path / "empty").mkdir()
    cases = {
        "stats.npz": (_fake_extractor("classifier:other"), "holds statistics of fake features; this run scores "
                      "with classifier:other"),
        "adm-stats-only.npz": (extractor, "holds Inception-v3 statistics (ADM's reference batch layout) and no "
                               "images"),
        "wrong-dim.npz": (_fake_extractor(INCEPTION_KEY), "holds statistics of 5-d features; fake "
                          "(inception-v3-torch-fidelity)'s features are 12-d"),
        "nothing.npz": (extractor, "holds neither images (arr_0) nor statistics (mu and sigma); it holds labels"),
        "mu-only.npz": (extractor, "holds mu but not sigma"),
        "empty": (extractor, "No images (png, jpg, ...) under"),
    }
    for name, (space, message) in cases.items():
        with pytest.raises(ValueError, match=None) as error:
            open_reference(tmp_path / name, space)
        assert message in str(error.value), (name, str(error.value))


def _npz(tmp_path, name, n, seed=0):
    path = tmp_path / f"{name}.npz"
    np.savez(path, _images(n, seed))
    return path


# --- the command --------------------------------------------------------------------------------------------------


def test_dit_fid_caches_reference_statistics_and_reads_them_back(judge_classifier, tmp_path, capsys):
    data, checkpoint = judge_classifier
    images = load_images(data / "train")
    np.savez(tmp_path / "samples.npz", images, np.arange(36) // 4)
    base = ["--classifier", str(checkpoint), "--splits", "2", "--json"]
    assert main(["dit", "fid", str(data / "val"), "--save-stats", str(tmp_path / "val.npz"), *base]) == 0
    only = json.loads(capsys.readouterr().out)
    assert "fid" not in only and only["reference"] == 18 and only["saved_stats"] == str(tmp_path / "val.npz")
    assert main(["dit", "fid", str(tmp_path / "samples.npz"), str(data / "val"), *base]) == 0
    direct = json.loads(capsys.readouterr().out)
    assert main(["dit", "fid", str(tmp_path / "samples.npz"), str(tmp_path / "val.npz"), *base]) == 0
    cached = json.loads(capsys.readouterr().out)
    for key in ("fid", "precision", "recall", "is", "accuracy", "reference"):
        assert cached[key] == direct[key], key
    assert direct["sfid"] is None and 0 <= direct["precision"] <= 1 and direct["extractor"].startswith("classifier:")
    assert main(["dit", "fid", str(tmp_path / "samples.npz"), str(tmp_path / "val.npz"), *base, "--no-ema"]) == 0
    assert json.loads(capsys.readouterr().out)["fid"] == direct["fid"]  # the run kept no EMA: the same weights
    state = torch.load(checkpoint, weights_only=True)
    name = next(iter(state["model"]))
    state["model"][name] = state["model"][name] + 0.01  # another classifier: another feature space
    torch.save(state, tmp_path / "other.pth")
    assert main(["dit", "fid", str(tmp_path / "samples.npz"), str(tmp_path / "val.npz"), "--classifier",
                 str(tmp_path / "other.pth")]) == 2
    err = capsys.readouterr().err
    assert f"holds statistics of {direct['extractor']} features; this run scores with classifier:" in err
    assert "compute the reference's statistics again with --save-stats" in err


@pytest.mark.parametrize("case", ["one-source", "missing-out-dir", "prc", "stats-space", "empty-folder"])
def test_dit_fid_refuses_in_one_line_and_writes_nothing(judge_classifier, tmp_path, capsys, case):
    data, checkpoint = judge_classifier
    np.savez(tmp_path / "s.npz", _images(6, 0, (16, 16)))
    np.savez(tmp_path / "inception-stats.npz", extractor=np.str_(INCEPTION_KEY), mu=np.zeros(3), sigma=np.eye(3))
    (tmp_path / "empty").mkdir()
    s, cls = str(tmp_path / "s.npz"), ["--classifier", str(checkpoint)]
    argv, message = {
        "one-source": ([s, *cls], "needs SAMPLES and REFERENCE, or REFERENCE alone with --save-stats FILE"),
        "missing-out-dir": ([s, str(data / "val"), *cls, "--save-stats", str(tmp_path / "no" / "x.npz")],
                            "is not a folder: "),
        "prc": ([s, str(data / "val"), *cls, "--prc-features", "-1"], "--prc-features must be 0"),
        "stats-space": ([s, str(tmp_path / "inception-stats.npz"), *cls],
                        f"holds statistics of {INCEPTION_KEY} features; this run scores with classifier:"),
        "empty-folder": ([s, str(tmp_path / "empty"), *cls], "No images (png, jpg, ...) under"),
    }[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["dit", "fid", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("weightformer dit fid: error: ") and message in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
