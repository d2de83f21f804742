"""Classification data at scale: `data pack` shards (manifest, checksums, random access), Hugging Face folders and
streams, exact resumption on another number of processes, damaged shards, missing optional packages."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import sys
import tarfile

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from train_helpers import tiny_config, tiny_dataset
from weightformer.cli.main import main
from weightformer.engine import Unreadable
from weightformer.tasks.classification import evaluate_folder, train
from weightformer.tasks.classification.data import FolderDataset
from weightformer.tasks.classification.shards import ShardDataset, pack_folder, verify_shards
from weightformer.tasks.classification.sources import DataSource


@pytest.fixture
def offline_hf(tmp_path, monkeypatch):
    """Hugging Face's caches in the test's folder, and no network (spawned processes inherit both)."""
    for name in ("HF_HOME", "HF_DATASETS_CACHE"):
        monkeypatch.setenv(name, str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def _hf_copies(folder, out):
    """The folder as a save_to_disk folder (images as bytes) and as parquet files (images as paths; train in 2
    files), rows in the folder's order."""
    datasets = pytest.importorskip("datasets")
    classes = sorted(p.name for p in (folder / "train").iterdir())
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=classes)})
    splits, embedded = {}, {}
    for split in ("train", "val"):
        items = FolderDataset(str(folder / split)).samples
        labels = [t for _, t in items]
        splits[split] = datasets.Dataset.from_dict({"image": [p for p, _ in items], "label": labels},
                                                   features=features)
        images = [{"bytes": open(p, "rb").read(), "path": None} for p, _ in items]
        embedded[split] = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
    datasets.DatasetDict(embedded).save_to_disk(str(out / "disk"))
    (out / "parquet").mkdir()
    half = len(splits["train"]) // 2
    splits["train"].select(range(half)).to_parquet(str(out / "parquet" / "train-00000-of-00002.parquet"))
    splits["train"].select(range(half, len(splits["train"]))).to_parquet(
        str(out / "parquet" / "train-00001-of-00002.parquet"))
    splits["val"].to_parquet(str(out / "parquet" / "val-00000-of-00001.parquet"))
    return out / "disk", out / "parquet"


def _members(shard):
    with tarfile.open(shard) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


def test_pack_round_trip_manifest_checksums_and_every_image_once(tmp_path):
    data = tiny_dataset(tmp_path / "d")
    manifest = pack_folder(data, tmp_path / "shards", shard_size=10, workers=2)
    root = tmp_path / "shards"
    assert json.loads((root / "manifest.json").read_text()) == manifest
    for split, per_class in (("train", 4), ("val", 2)):
        entry = manifest["splits"][split]
        assert entry["counts"] == dict.fromkeys(manifest["classes"], per_class) and not entry["unreadable"]
        assert [s["samples"] for s in entry["shards"]] == [10] * (entry["samples"] // 10) + (
            [entry["samples"] % 10] if entry["samples"] % 10 else [])
        stored = []
        for shard in entry["shards"]:
            path = root / shard["file"]
            assert hashlib.sha256(path.read_bytes()).hexdigest() == shard["sha256"]
            assert path.stat().st_size == shard["bytes"]
            members = _members(path)
            for name, blob in members.items():
                if name.endswith(".png"):
                    label = int(members[name.replace(".png", ".cls")])
                    stored.append((hashlib.sha256(blob).hexdigest(), manifest["classes"][label]))
        sources = [(hashlib.sha256(p.read_bytes()).hexdigest(), p.parent.name) for p in (data / split).rglob("*.png")]
        assert sorted(stored) == sorted(sources)  # every image once, with its class
        shards, folder = ShardDataset(root, split), FolderDataset(str(data / split))
        assert len(shards) == len(folder) and shards.targets == folder.targets  # the folder's order
        assert np.array_equal(np.asarray(shards[5][0]), np.asarray(folder[5][0]))
        first = [shards.targets[i] for i in range(len(shards)) if shards.index["shard"][i] == 0]
        assert len(set(first)) >= 3  # shards mix the classes (the folder lists them class after class)
    assert verify_shards(root) == (6, [])
    timm_info = json.loads((root / "_info.json").read_text())
    assert timm_info["splits"]["train"]["shard_lengths"] == [10, 10, 10, 6]


def test_timm_reads_the_shards_too(tmp_path):
    pytest.importorskip("webdataset")
    from timm.data import create_dataset

    pack_folder(tiny_dataset(tmp_path / "d"), tmp_path / "shards", shard_size=10)
    dataset = create_dataset("wds/tiny", root=str(tmp_path / "shards"), split="val", is_training=False)
    assert sorted(int(target) for _, target in dataset) == sorted(list(range(9)) * 2)


def test_pack_leaves_out_unreadable_images_and_never_overwrites(tmp_path, capsys):
    data = tiny_dataset(tmp_path / "d")
    bad = data / "val" / sorted(os.listdir(data / "val"))[2] / "00001.png"
    bad.write_bytes(b"not a png")
    assert main(["data", "pack", str(data), str(tmp_path / "shards"), "--shard-size", "7", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["splits"]["val"] == {"samples": 17, "shards": 3, "bytes": summary["splits"]["val"]["bytes"],
                                        "unreadable": 1}
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert manifest["splits"]["val"]["unreadable"][0]["path"] == str(bad)
    before = (tmp_path / "shards" / "manifest.json").read_bytes()
    assert main(["data", "pack", str(data), str(tmp_path / "shards")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("weightformer data pack: error: ") and "already exists" in err and err.count("\n") == 1
    assert (tmp_path / "shards" / "manifest.json").read_bytes() == before
    assert main(["data", "pack", str(tmp_path / "nowhere"), str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_shard_order_reads_a_few_shards_at_a_time(tmp_path):
    pack_folder(tiny_dataset(tmp_path / "d"), tmp_path / "shards", shard_size=5)  # 8 shards of train
    dataset = ShardDataset(tmp_path / "shards", "train", order="shards", window=2)
    shard_of, sizes = dataset.index["shard"].tolist(), np.bincount(dataset.index["shard"]).tolist()
    order = dataset.epoch_order(0, 3)
    assert sorted(order) == list(range(36)) and order == dataset.epoch_order(0, 3) != dataset.epoch_order(0, 4)
    windows, current, count = [], set(), 0  # the order, cut where two whole shards have been read
    for i in order:
        current.add(shard_of[i])
        count += 1
        assert len(current) <= 2
        if len(current) == 2 and count == sum(sizes[s] for s in current):
            windows.append(current)
            current, count = set(), 0
    assert len(windows) == 4 and sorted(s for w in windows for s in w) == list(range(8))
    assert ShardDataset(tmp_path / "shards", "train").epoch_order is None  # "global": the sampler's shuffle


def _rewrite_without(shard, missing):
    """Rewrite a shard without the members of one sample (so every later member moves)."""
    members = _members(shard)
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, blob in members.items():
            if not name.startswith(missing):
                info = tarfile.TarInfo(name)
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))


def test_corrupt_and_missing_members_are_counted_and_skipped(tmp_path, capsys):
    data = tiny_dataset(tmp_path / "d")
    pack_folder(data, tmp_path / "shards", shard_size=10)
    root = tmp_path / "shards"
    dataset = ShardDataset(root, "train")
    # Sample 3: one byte of its image flipped in place. Sample 14 (another shard): its members removed from it.
    flipped, rewritten = (dataset.shard_files[int(dataset.index["shard"][i])] for i in (3, 14))
    assert flipped != rewritten
    with open(flipped, "r+b") as f:
        f.seek(int(dataset.index["offset"][3]) + 20)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    _rewrite_without(rewritten, f"{int(dataset.index['key'][14]):08d}.")
    with pytest.warns(UserWarning, match=rewritten.name):
        dataset = ShardDataset(root, "train")  # the rewritten shard's size differs from the manifest: said at start
    with pytest.warns(UserWarning, match="differs from its index"):
        items = [dataset[i] for i in range(len(dataset))]
    bad = {i: item.description for i, item in enumerate(items) if isinstance(item, Unreadable)}
    assert sorted(bad) == [3, 14] and "CRC-32" in bad[3] and "missing" in bad[14]
    folder = FolderDataset(str(data / "train"))
    assert all(np.array_equal(np.asarray(items[i][0]), np.asarray(folder[i][0])) for i in (10, 13, 15, 19))
    assert main(["data", "verify", str(root)]) == 1
    out = capsys.readouterr().out
    assert f"{flipped}: SHA-256 differs" in out and f"{rewritten}: " in out and "6 shards checked: 2 differ" in out
    with pytest.warns(UserWarning):
        result = train(tiny_config(f"wds:{root}", tmp_path / "runs"))
    assert result["skipped_samples"] == 2
    (root / "val" / "shard-000001.tar").unlink()
    with pytest.raises(FileNotFoundError, match="shard-000001.tar listed in .* is missing"):
        DataSource.parse(f"wds:{root}").open("val", None)


def test_training_from_shards_and_a_local_hf_folder_matches_the_folder(tmp_path, offline_hf):
    data = tiny_dataset(tmp_path / "d")
    pack_folder(data, tmp_path / "shards", shard_size=10)
    disk, parquet = _hf_copies(data, tmp_path)
    weights = {}
    for name, data_dir in (("folder", data), ("wds", f"wds:{tmp_path / 'shards'}"), ("hf", f"hf:{disk}"),
                           ("parquet", f"hf:{parquet}")):
        result = train(tiny_config(data_dir, tmp_path / name))
        assert result["class_names"] == sorted(os.listdir(data / "train"))
        weights[name] = result["model"].state_dict()
    for name in ("wds", "hf", "parquet"):  # the same images in the same order: the same batches, bit for bit
        assert all(torch.equal(weights["folder"][k], v) for k, v in weights[name].items()), name
    checkpoint = tmp_path / "wds" / "synthetic" / "checkpoints" / "last.pth"
    for data_dir in (f"wds:{tmp_path / 'shards'}", f"hf-stream:{parquet}"):  # eval reads every source too
        metrics = evaluate_folder(checkpoint, data_dir, "val", workers=0, device="cpu", amp=False)
        assert metrics["images"] == 18 and metrics["top1"] == pytest.approx(result["val_top1"])
    result = train(tiny_config(f"hf-stream:{parquet}", tmp_path / "stream", workers=2))
    assert result["val_images"] == 18 and result["skipped_samples"] == 0
    assert (result["run_dir"] / "predictions.png").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SEEN: list[int] = []  # what this process's training read: sample indices (shards), stream positions (stream)


def _record_reads() -> None:
    """Make the shard dataset and the stream note each sample they hand to training (data workers: 0)."""
    from weightformer.tasks.classification import hf, shards

    get, load = shards.ShardDataset.__getitem__, hf.HFStream.load

    def getitem(self, item):
        if self.split == "train":
            SEEN.append(item[0])
        return get(self, item)

    def stream_load(self, record, seed):
        if self.split == "train":
            SEEN.append(seed % 2_147_483_647)  # EpochSampler.sample_seed(position) ends in the position
        return load(self, record, seed)

    shards.ShardDataset.__getitem__, hf.HFStream.load = getitem, stream_load


def _resume_on_two(rank: int, port: int, runs: dict, out) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    _record_reads()
    # One process group for both runs (the engine keeps a group it did not create): two groups in a row on one
    # port can race, one rank joining the new group while the other still holds the old one.
    torch.distributed.init_process_group("gloo")
    report = {}
    for name, (data_dir, checkpoint) in runs.items():
        SEEN.clear()
        # batch 2 on each of 2 processes: the global batch of the single-process run, 4
        train(tiny_config(data_dir, out / f"resumed-{name}-{rank}", resume=checkpoint, batch_size=2,
                          shard_order="shards", shard_window=2, stream_buffer=8,
                          resume_override=["world_size", "batch_size"]))
        report[name] = list(SEEN)
    torch.distributed.destroy_process_group()
    (out / f"rank{rank}.json").write_text(json.dumps(report))


def test_a_mid_epoch_resume_on_two_processes_reads_each_sample_once(tmp_path, offline_hf):
    data = tiny_dataset(tmp_path / "d")
    pack_folder(data, tmp_path / "shards", shard_size=5)
    _, parquet = _hf_copies(data, tmp_path)
    _record_reads()
    runs, before = {}, {}
    for name, data_dir in (("wds", f"wds:{tmp_path / 'shards'}"), ("stream", f"hf-stream:{parquet}")):
        SEEN.clear()  # one process, batch 4: 9 steps; the checkpoint after step 3 is 12 samples into the epoch
        result = train(tiny_config(data_dir, tmp_path / name, checkpoint_interval=3, keep_checkpoints=10,
                                   shard_order="shards", shard_window=2, stream_buffer=8))
        runs[name] = (data_dir, str(result["run_dir"] / "checkpoints" / "step-00000003.pth"))
        before[name] = list(SEEN)
    mp.start_processes(_resume_on_two, args=(_free_port(), runs, tmp_path), nprocs=2, start_method="spawn")
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for name in runs:
        after = reports[0][name] + reports[1][name]
        assert len(reports[0][name]) == len(reports[1][name]) == 12
        assert sorted(before[name][:12] + after) == list(range(36)), name  # each sample once in the epoch
        assert sorted(after) == sorted(before[name][12:]), name  # and the very samples the first run went on to


def test_missing_optional_package_gives_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` now fails as if not installed
    (tmp_path / "hf").mkdir()
    assert main(["data", "bench", f"hf:{tmp_path / 'hf'}", "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert err == ("weightformer data bench: error: reading Hugging Face datasets (hf:, hf-stream:) needs the "
                   "datasets package: pip install 'weightformer[data]'\n")
    assert main(["train", "--data-dir", f"hf-stream:{tmp_path / 'hf'}", "--output-dir", str(tmp_path / "r")]) == 2
    assert "needs the datasets package" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_bad_sources_fail_in_one_line(tmp_path, capsys, offline_hf):
    data = tiny_dataset(tmp_path / "d")
    pack_folder(data, tmp_path / "shards", shard_size=10)
    cases = [
        (f"wds:{tmp_path / 'nowhere'}", "does not exist"),
        (f"wds:{data}", "has no manifest.json"),
        ("wds:", "names no folder"),
    ]
    for data_dir, message in cases:
        assert main(["data", "bench", data_dir, "--workers", "0"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert main(["data", "bench", str(tmp_path / "shards"), "--split", "test", "--workers", "0"]) == 2
    assert "No 'test' split" in capsys.readouterr().err
    shutil.rmtree(data / "val")
    assert main(["data", "bench", str(tmp_path / "shards"), "--workers", "0", "--img-size", "16", "--batch-size",
                 "4"]) == 0  # a shard folder is found by its manifest; it does not need the source folder
    assert "36 images" in capsys.readouterr().out
