"""Tar shards of an image-folder dataset (WebDataset layout), and a dataset that reads them by index.

`pack_folder(src, out, shard_size)` writes each split of an ImageNet-layout folder as `<out>/<split>/shard-
000000.tar`, ... Each image is stored as two members, `<key>.<ext>` (the image file's bytes, unchanged) and
`<key>.cls` (its class index), key = the image's place in the folder listing (`00000042`); images are dealt to
shards in a fixed random order, so every shard mixes the classes. Sample k of the split is still the k-th image
of the folder in ImageFolder's order (classes sorted, then files). Beside the shards:

- `manifest.json`: the classes, and per split the samples, the count per class, each shard's file, samples, bytes
  and SHA-256, the index file, and the images left out because they could not be read;
- `<split>/index.npz`: each sample's shard, key, offset and size of its image bytes, class and CRC-32;
- `_info.json`: timm's description of the splits, so `timm.data.create_dataset("wds/...")` and webdataset read
  the shards too (in their streaming order).

With the index, shards are random access: `ShardDataset[(k, seed)]` reads sample k's bytes with one positional
read, so the engine's EpochSampler applies unchanged, and a run from shards resumes exactly, on any number of
processes, like a run from the folder (with `order="global"`, on the very same batches). `order="shards"` keeps
the reads within a few shards at a time (a cluster file system's friend): shards in an order drawn from (seed,
epoch), samples shuffled within windows of `window` consecutive shards; still a permutation fixed by (seed,
epoch), so resumption stays exact. A member whose bytes fail their CRC, a member missing from a rewritten shard
(the shard is re-indexed from its own headers) or an image that does not decode comes back `Unreadable`: the
engine skips and counts it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import tarfile
import tempfile
import warnings
import zlib
from collections import Counter, OrderedDict
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

from ...engine.data import Unreadable
from .data import IndexedImages, check_splits, open_image

__all__ = ["MANIFEST", "FORMAT", "pack_folder", "read_manifest", "ShardDataset", "verify_shards"]

MANIFEST, FORMAT, VERSION = "manifest.json", "weightformer-shards", 1
_SHUFFLE_SEED = 0  # of the images' assignment to shards: packing the same folder twice gives the same shards
_BLOCK = tarfile.BLOCKSIZE  # 512: a member's header, and the unit its data is padded to
_INDEX_FIELDS = ("shard", "key", "offset", "size", "label", "crc")


#################################################################################
#                                    Packing                                    #
#################################################################################


def pack_folder(src: str | Path, out: str | Path, shard_size: int = 1000, splits: Sequence[str] | None = None,
                workers: int = 1) -> dict[str, Any]:
    """Write the splits of the ImageNet-layout folder `src` as tar shards of `shard_size` images to `out`, a new
    folder (written under a temporary name and renamed when complete); return the manifest.

    `splits`: the sub-folders to pack (default: every sub-folder); they must hold the same classes. Images that
    cannot be read are left out and listed in the manifest. `workers` processes write shards in parallel.
    """
    src, out = Path(src), Path(out)
    if shard_size < 1:
        raise ValueError(f"--shard-size must be at least 1, got {shard_size}.")
    if out.exists():
        raise FileExistsError(f"{out} already exists: pack into a new folder (nothing is overwritten).")
    if not src.is_dir():
        raise FileNotFoundError(f"Dataset folder {src} does not exist.")
    splits = list(splits) if splits else sorted(p.name for p in src.iterdir() if p.is_dir())
    if not splits:
        raise ValueError(f"{src} holds no split folders: expected <split>/<class>/<image>.")
    classes = check_splits(src, splits[0], None)
    for split in splits[1:]:
        check_splits(src, splits[0], split)  # the same classes in every split
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        manifest = {"format": FORMAT, "version": VERSION, "source": str(src.resolve()), "classes": classes,
                    "splits": {s: _pack_split(src / s, tmp, s, classes, shard_size, workers) for s in splits}}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        (tmp / "_info.json").write_text(json.dumps(_timm_info(out.name, manifest), indent=1))
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp's folder is private; the result is an ordinary folder
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _pack_split(folder: Path, out: Path, split: str, classes: list[str], shard_size: int,
                workers: int) -> dict[str, Any]:
    """Write one split's shards and index; return its manifest entry."""
    items = make_dataset(str(folder), {c: i for i, c in enumerate(classes)}, extensions=IMG_EXTENSIONS)
    (out / split).mkdir()
    numbered = list(enumerate(items))  # key: the image's place in the folder listing
    # Images go to shards in a random (fixed) order, so that each shard mixes the classes: a folder lists them
    # class after class, and readers that take a few shards at a time (shard_order "shards", webdataset) would
    # see a few classes at a time. The index stays in the folder's order.
    random.Random(f"{_SHUFFLE_SEED}/{split}").shuffle(numbered)
    jobs = [(out, f"{split}/shard-{n:06d}.tar", numbered[start:start + shard_size])
            for n, start in enumerate(range(0, len(items), shard_size))]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            shards = list(pool.map(_write_shard, jobs))
    else:
        shards = [_write_shard(job) for job in jobs]
    rows = sorted(((n, *entry) for n, shard in enumerate(shards) for entry in shard.pop("entries")),
                  key=lambda row: row[1])  # sample k: the k-th readable image of the folder
    columns = np.array(rows, dtype=np.int64).reshape(-1, len(_INDEX_FIELDS)).T
    np.savez(out / split / "index.npz", **dict(zip(_INDEX_FIELDS, columns, strict=True)))
    counts = Counter(int(label) for label in columns[4])
    unreadable = [entry for shard in shards for entry in shard.pop("unreadable")]
    return {"samples": len(rows), "counts": {c: counts.get(i, 0) for i, c in enumerate(classes)},
            "index": f"{split}/index.npz", "shards": shards, "unreadable": unreadable}


def _write_shard(job: tuple[Path, str, list[tuple[int, tuple[str, int]]]]) -> dict[str, Any]:
    """Write one tar shard; return its manifest entry, with its index rows (key, offset, size, label, crc)."""
    root, name, items = job
    entries, unreadable = [], []
    with tarfile.open(root / name, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, (path, label) in items:
            data = Path(path).read_bytes()
            problem = _unreadable(data)
            if problem:
                unreadable.append({"path": path, "reason": problem})
                continue
            stem = f"{key:08d}"
            offset = _add_member(tar, f"{stem}{Path(path).suffix.lower()}", data)
            _add_member(tar, f"{stem}.cls", str(label).encode())
            entries.append((key, offset, len(data), label, zlib.crc32(data)))
    return {"file": name, "samples": len(entries), "bytes": (root / name).stat().st_size,
            "sha256": _sha256(root / name), "entries": entries, "unreadable": unreadable}


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> int:
    """Append a member (fixed metadata, so packing is reproducible); return the offset of its data."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    header_at = tar.offset
    tar.addfile(info, io.BytesIO(data))
    assert tar.offset == header_at + _BLOCK + -(-len(data) // _BLOCK) * _BLOCK  # a one-block USTAR header
    return header_at + _BLOCK


def _unreadable(data: bytes) -> str | None:
    """Why these bytes are not an image PIL can open, or None."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _timm_info(name: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """timm's `_info.json` (reader_wds): the splits' shard files and lengths."""
    return {"name": name, "splits": {
        split: {"name": split, "num_samples": entry["samples"], "filenames": [s["file"] for s in entry["shards"]],
                "shard_lengths": [s["samples"] for s in entry["shards"]]}
        for split, entry in manifest["splits"].items()}}


#################################################################################
#                                    Reading                                    #
#################################################################################


def read_manifest(root: str | Path) -> dict[str, Any]:
    """The manifest of a `data pack` folder, or a one-line error saying what is wrong."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        what = "does not exist" if not Path(root).exists() else f"has no {MANIFEST} (not written by data pack?)"
        raise FileNotFoundError(f"Shard folder {root} {what}.")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not a valid manifest: {error}.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} manifest (written by weightformer data pack).")
    return manifest


def split_entry(manifest: dict[str, Any], root: Path, split: str) -> dict[str, Any]:
    if split not in manifest["splits"]:
        raise FileNotFoundError(f"No {split!r} split in {root / MANIFEST}: it has {', '.join(manifest['splits'])}.")
    return manifest["splits"][split]


class ShardDataset(IndexedImages):
    """Samples of one split of a `data pack` folder, read by index from its tar shards (see the module's doc).

    `dataset[(index, seed)]` returns (transformed image, class) like `FolderDataset`, or `Unreadable`.
    """

    def __init__(self, root: str | Path, split: str, transform: Any = None, order: str = "global",
                 window: int = 4) -> None:
        self.root, self.split, self.transform = Path(root), split, transform
        manifest = read_manifest(self.root)
        self.classes: list[str] = manifest["classes"]
        entry = split_entry(manifest, self.root, split)
        self.shard_files = [self.root / s["file"] for s in entry["shards"]]
        self._check_shards(entry["shards"])
        with np.load(self.root / entry["index"], allow_pickle=False) as index:
            self.index = {name: index[name] for name in _INDEX_FIELDS}
        self.targets = self.index["label"].tolist()
        # the samples each shard holds
        by_shard = np.argsort(self.index["shard"], kind="stable")
        counts = np.bincount(self.index["shard"], minlength=len(self.shard_files))
        self.shard_samples = [torch.from_numpy(a) for a in np.split(by_shard, np.cumsum(counts)[:-1])]
        self.order, self.window = order, window
        self._files: OrderedDict[int, int] = OrderedDict()  # shard -> file descriptor, this process's
        self._pid = os.getpid()
        self._reindexed: dict[int, dict[str, tuple[int, int]]] = {}

    def _check_shards(self, shards: list[dict[str, Any]]) -> None:
        for path, shard in zip(self.shard_files, shards, strict=True):
            if not path.is_file():
                raise FileNotFoundError(f"Shard {path} listed in {self.root / MANIFEST} is missing.")
            if path.stat().st_size != shard["bytes"]:
                warnings.warn(f"Shard {path} is {path.stat().st_size} bytes, its manifest says {shard['bytes']}: "
                              "its members are checked as they are read, and those that differ are skipped.",
                              stacklevel=3)

    def __len__(self) -> int:
        return len(self.targets)

    def original(self, index: int) -> Image.Image | Unreadable:
        """Sample `index`'s image as stored."""
        data = self.read(index)
        return data if isinstance(data, Unreadable) else open_image(data, self.describe(index))

    def describe(self, index: int) -> str:
        shard = self.shard_files[int(self.index["shard"][index])]
        return f"{shard} member {int(self.index['key'][index]):08d}"

    def read(self, index: int) -> bytes | Unreadable:
        """Sample `index`'s image bytes, checked against the index's CRC-32."""
        shard, key = int(self.index["shard"][index]), int(self.index["key"][index])
        offset, size = int(self.index["offset"][index]), int(self.index["size"][index])
        fd = self._file(shard)
        block = os.pread(fd, _BLOCK + size, offset - _BLOCK)  # the member's header, then its data
        data = block[_BLOCK:]
        if len(block) < _BLOCK + size or not _header_names(block[:_BLOCK], key):
            found = self._members(shard).get(f"{key:08d}")
            if found is None:
                return Unreadable(f"{self.describe(index)} (missing from the shard)")
            data = os.pread(fd, found[1], found[0])
        if zlib.crc32(data) != int(self.index["crc"][index]):
            return Unreadable(f"{self.describe(index)} (its bytes do not match the manifest's CRC-32)")
        return data

    def _file(self, shard: int) -> int:
        """An open file descriptor of `shard` (this process keeps up to 64 open, so a worker re-opens rarely)."""
        if os.getpid() != self._pid:  # a forked data worker: its own descriptors
            self._files, self._pid = OrderedDict(), os.getpid()
        if shard in self._files:
            self._files.move_to_end(shard)
        else:
            if len(self._files) >= 64:
                os.close(self._files.popitem(last=False)[1])
            self._files[shard] = os.open(self.shard_files[shard], os.O_RDONLY)
        return self._files[shard]

    def _members(self, shard: int) -> dict[str, tuple[int, int]]:
        """{key: (data offset, size)} of the images in `shard` read from its own headers (a shard rewritten since
        it was indexed: its members moved)."""
        if shard not in self._reindexed:
            warnings.warn(f"Shard {self.shard_files[shard]} differs from its index: reading it by its own headers.",
                          stacklevel=4)
            members = {}
            try:
                with tarfile.open(self.shard_files[shard], ignore_zeros=True) as tar:
                    for info in tar:
                        stem, _, ext = info.name.partition(".")
                        if ext != "cls" and info.isfile():
                            members[stem] = (info.offset_data, info.size)
            except (tarfile.TarError, OSError) as error:  # a truncated or damaged tail: keep what was read
                warnings.warn(f"Shard {self.shard_files[shard]}: {error}", stacklevel=4)
            self._reindexed[shard] = members
        return self._reindexed[shard]

    @property
    def epoch_order(self) -> Any:
        """The epoch order the engine's sampler takes: None (its uniform shuffle) or the shard-local one."""
        return self._shard_order if self.order == "shards" else None

    def _shard_order(self, seed: int, epoch: int) -> list[int]:
        """Shards in a random order; samples shuffled within each window of `window` consecutive shards."""
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        shards = torch.randperm(len(self.shard_files), generator=generator).tolist()
        order = []
        for w in range(0, len(shards), self.window):
            group = torch.cat([self.shard_samples[s] for s in shards[w:w + self.window]])
            order += group[torch.randperm(len(group), generator=generator)].tolist()
        return order

    def __getstate__(self) -> dict[str, Any]:  # (spawned workers) descriptors do not travel
        return {**self.__dict__, "_files": OrderedDict(), "_pid": -1}

    def __del__(self) -> None:
        if getattr(self, "_pid", None) == os.getpid():
            for fd in self._files.values():
                os.close(fd)


def _header_names(header: bytes, key: int) -> bool:
    """Whether a tar header block names a member of sample `key` (the index points at the right place)."""
    return header[:100].split(b"\0", 1)[0].decode("utf-8", "replace").startswith(f"{key:08d}.")


def verify_shards(root: str | Path) -> tuple[int, list[str]]:
    """Check every shard of a `data pack` folder against its manifest (present, size, SHA-256); return the number
    of shards checked and one line per problem."""
    root = Path(root)
    manifest = read_manifest(root)
    problems, checked = [], 0
    for entry in manifest["splits"].values():
        for shard in entry["shards"]:
            path, checked = root / shard["file"], checked + 1
            if not path.is_file():
                problems.append(f"{path}: missing")
            elif path.stat().st_size != shard["bytes"]:
                problems.append(f"{path}: {path.stat().st_size} bytes, the manifest says {shard['bytes']}")
            elif _sha256(path) != shard["sha256"]:
                problems.append(f"{path}: SHA-256 differs from the manifest's")
    return checked, problems
