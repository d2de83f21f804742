"""FID and IS against float64 references on known Gaussians and distributions; `weightformer dit fid` in a
classifier's feature space; image loading; the Inception weights never downloaded."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from weightformer.cli.main import main
from weightformer.tasks.generation.metrics import (
    classifier_scorer,
    frechet_distance,
    gaussian_stats,
    inception_score,
    load_images,
)


def _random_cov(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d + 3))
    return a @ a.T / d


def _reference_fid(mu1, s1, mu2, s2) -> float:
    """Tr sqrt(S1 S2) = Tr sqrt(S1^1/2 S2 S1^1/2), the latter symmetric PSD: eigen-decompositions only."""
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(inner, 0, None)).sum())


@pytest.mark.parametrize("d", [1, 7, 33])
def test_frechet_distance_matches_an_eigendecomposition_reference(d):
    rng = np.random.default_rng(d)
    mu1, mu2, s1, s2 = rng.normal(size=d), rng.normal(size=d), _random_cov(rng, d), _random_cov(rng, d)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(_reference_fid(mu1, s1, mu2, s2), rel=1e-9, abs=1e-9)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_of_diagonal_gaussians_is_closed_form():
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = 1 + 0 + 4 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()  # = 5 + 4 + 1 + 0
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_sample_statistics_converge_to_the_gaussians_distance():
    rng = np.random.default_rng(0)
    d = 5
    mu1, mu2, s1, s2 = rng.normal(size=d), rng.normal(size=d), _random_cov(rng, d), _random_cov(rng, d)
    x1 = rng.multivariate_normal(mu1, s1, size=200_000)
    x2 = rng.multivariate_normal(mu2, s2, size=200_000)
    exact = _reference_fid(mu1, s1, mu2, s2)
    assert frechet_distance(*gaussian_stats(x1), *gaussian_stats(x2)) == pytest.approx(exact, rel=0.02)
    with pytest.raises(ValueError, match="at least 2 feature vectors"):
        gaussian_stats(x1[:1])


def test_inception_score_against_a_loop_reference_and_its_extremes():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(5) * 0.3, size=37)
    parts = np.array_split(probs, 4)
    ref = []
    for part in parts:
        marginal = [sum(p[k] for p in part) / len(part) for k in range(5)]
        kl = [sum(p[k] * (np.log(p[k]) - np.log(marginal[k])) for k in range(5) if p[k] > 0) for p in part]
        ref.append(np.exp(sum(kl) / len(kl)))
    mean, std = inception_score(probs, splits=4)
    assert mean == pytest.approx(np.mean(ref), rel=1e-10) and std == pytest.approx(np.std(ref), rel=1e-8)
    assert inception_score(np.eye(6)[np.arange(60) % 6], splits=1)[0] == pytest.approx(6.0)  # sure and balanced
    assert inception_score(np.full((30, 6), 1 / 6), splits=3)[0] == pytest.approx(1.0)  # no idea


def test_classifier_features_are_the_pre_logits_of_its_predictions(judge_classifier):
    data, checkpoint = judge_classifier
    images = load_images(data / "val")
    assert images.shape == (18, 16, 16, 3) and images.dtype == np.uint8
    features, probs = classifier_scorer(checkpoint, batch_size=5)(images)
    assert features.shape == (18, 16) and probs.shape == (18, 9)
    from weightformer.tasks.classification.evaluate import load_classifier

    model, _ = load_classifier(checkpoint)
    x = torch.stack([torch.from_numpy(im).permute(2, 0, 1).float() / 255 for im in images])
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    with torch.no_grad():
        expected = model.eval()((x - mean[:, None, None]) / std[:, None, None]).softmax(-1)
    np.testing.assert_allclose(probs, expected.double().numpy(), atol=1e-5)


def test_dit_fid_scores_samples_with_a_classifier(judge_classifier, tmp_path, capsys):
    data, checkpoint = judge_classifier
    images = load_images(data / "train")  # 36 images
    labels = np.arange(36) // 4  # the folders' order: 4 per class
    np.savez(tmp_path / "samples.npz", images, labels)
    out = tmp_path / "fid.json"
    assert main(["dit", "fid", str(tmp_path / "samples.npz"), str(data / "val"), "--classifier", str(checkpoint),
                 "--splits", "2", "-o", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["samples"] == 36 and result["reference"] == 18 and result["fid"] > 0
    assert 0 <= result["accuracy"] <= 100 and "classified as their conditioning class" in capsys.readouterr().out
    np.savez(tmp_path / "same.npz", images)  # a set against itself: distance 0
    main(["dit", "fid", str(tmp_path / "same.npz"), str(data / "train"), "--classifier", str(checkpoint),
          "-o", str(out)])
    assert json.loads(out.read_text())["fid"] == pytest.approx(0.0, abs=1e-6)


def test_folders_of_mixed_sizes_and_bad_sources(tmp_path):
    folder = tmp_path / "imgs" / "a"
    folder.mkdir(parents=True)
    Image.new("RGB", (6, 4), (255, 0, 0)).save(folder / "1.png")
    Image.new("L", (12, 8), 128).save(folder / "2.jpg")
    images = load_images(tmp_path / "imgs")
    assert images.shape == (2, 4, 6, 3) and images[0, 0, 0].tolist() == [255, 0, 0]
    with pytest.raises(ValueError, match="No images"):
        load_images(_empty(tmp_path))
    np.savez(tmp_path / "floats.npz", np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="arr_0 must be uint8 images"):
        load_images(tmp_path / "floats.npz")


def _empty(tmp_path):
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


def test_inception_weights_are_never_downloaded(tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch_fidelity")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty cache
    np.savez(tmp_path / "s.npz", np.zeros((2, 8, 8, 3), np.uint8))
    assert main(["dit", "fid", str(tmp_path / "s.npz"), str(tmp_path / "s.npz")]) == 2
    err = capsys.readouterr().err
    assert "Inception weights are not cached at" in err and "or score with --classifier CKPT" in err
    assert not (tmp_path / "torch").exists()  # nothing fetched, nothing written


def _random_inception_weights(path) -> None:
    """torch-fidelity's Inception-v3 with random weights (He-normal convolutions, identity batch norms, a
    large-logit head), saved where the real weights would be. A random deep network maps all images to nearly
    the same features, so its Inception Score stays close to 1; the test compares IS - 1."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    with pytest.MonkeyPatch.context() as patch:  # build the network without loading any weights
        patch.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
        torch.save({}, path.parent / "none.pth")
        state = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                            feature_extractor_weights_path=str(path.parent / "none.pth")).state_dict()
    generator = torch.Generator().manual_seed(0)
    for name, value in state.items():
        if not value.dtype.is_floating_point:
            continue
        if name.endswith("running_var") or (name.endswith("weight") and value.ndim == 1):
            value.fill_(1.0)
        elif value.ndim == 1:
            value.zero_()
        else:
            scale = 40.0 if name.startswith("fc.") else 1.0
            value.copy_(torch.randn(value.shape, generator=generator) * scale * (2.0 / value[0].numel()) ** 0.5)
    torch.save(state, path)


@pytest.mark.slow  # three Inception-v3 passes over 2 x 12 images at 299 px on the CPU
def test_inception_fid_and_is_match_torch_fidelity(tmp_path, monkeypatch):
    """`weightformer dit fid` in Inception space (weights from the local hub cache) against torch-fidelity's own
    calculate_metrics on the same images and weights: FID and IS to 1e-6 relative, precision and recall (k = 3)
    equal; sFID against the Fréchet distance of mixed_6/conv's first 7 channels (NHWC, ADM's order) taken here."""
    torch_fidelity = pytest.importorskip("torch_fidelity")
    from weightformer.tasks.generation.metrics import INCEPTION_WEIGHTS

    weights = tmp_path / "torch" / "hub" / "checkpoints" / INCEPTION_WEIGHTS
    weights.parent.mkdir(parents=True)
    _random_inception_weights(weights)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    rng = np.random.default_rng(0)
    samples = rng.integers(0, 256, (12, 21, 19, 3), dtype=np.uint8)
    reference = (samples // 2 + rng.integers(0, 128, samples.shape)).astype(np.uint8)
    np.savez(tmp_path / "samples.npz", samples)
    (tmp_path / "ref").mkdir()
    for i, image in enumerate(reference):
        Image.fromarray(image).save(tmp_path / "ref" / f"{i:02d}.png")
    assert main(["dit", "fid", str(tmp_path / "samples.npz"), str(tmp_path / "ref"), "--splits", "3",
                 "-o", str(tmp_path / "fid.json")]) == 0
    ours = json.loads((tmp_path / "fid.json").read_text())

    class Images(torch.utils.data.Dataset):  # torch-fidelity's input: uint8 (3, H, W) tensors
        def __init__(self, images):
            self.images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()

        def __len__(self):
            return len(self.images)

        def __getitem__(self, i):
            return self.images[i]

    theirs = torch_fidelity.calculate_metrics(
        input1=Images(samples), input2=Images(reference), fid=True, isc=True, isc_splits=3, prc=True,
        feature_extractor="inception-v3-compat", feature_layer_prc="2048", samples_shuffle=False, cuda=False,
        cache=False, verbose=False, save_cpu_ram=True, feature_extractor_weights_path=str(weights))
    assert (ours["precision"], ours["recall"]) == pytest.approx((theirs["precision"], theirs["recall"]), abs=1e-6)
    assert ours["sfid"] == pytest.approx(frechet_distance(*gaussian_stats(_spatial(samples, weights)),
                                                          *gaussian_stats(_spatial(reference, weights))), rel=1e-6)
    assert ours["space"] == "Inception-v3" and ours["samples"] == ours["reference"] == 12
    assert ours["fid"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-6)
    assert ours["fid"] > 1.0  # the two sets differ, and random features see it
    assert ours["is"] - 1 == pytest.approx(theirs["inception_score_mean"] - 1, rel=1e-4)
    assert ours["is_std"] == pytest.approx(theirs["inception_score_std"], rel=1e-4, abs=1e-9)
    assert ours["is"] > 1.001  # the softmax depends on the image


def _spatial(images: np.ndarray, weights) -> np.ndarray:
    """sFID's features written out: Mixed_6d's 1x1 branch (TensorFlow's mixed_6/conv) applied to Mixed_6c's
    output, its first 7 channels in NHWC order, flattened (ADM's evaluator: spatial[..., :7])."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights))
    inputs = []
    net.Mixed_6c.register_forward_hook(lambda module, args, out: inputs.append(out))
    with torch.no_grad():
        net(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
        out = net.Mixed_6d.branch1x1(inputs[0])  # (N, 192, 17, 17)
    return out.permute(0, 2, 3, 1)[..., :7].reshape(len(images), -1).double().numpy()  # (N, 2023)
