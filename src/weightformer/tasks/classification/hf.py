"""Hugging Face `datasets` sources: a local folder read by index (Arrow), or streamed.

- `HFDataset`: a `save_to_disk` folder (`load_from_disk`, memory-mapped) or a folder of parquet / arrow / ...
  files (`load_dataset(folder)`, which converts them once into the `datasets` cache). Arrow tables are random
  access, so the engine's EpochSampler applies unchanged: exact resumption, as from an image folder.
- `HFStream`: the same folders through `load_dataset(folder, streaming=True)`, read in passes (an engine
  `StreamDataset`): each epoch's order is the stream's, shuffled (the order of its shards, then a buffer of
  `buffer` records) with a seed drawn from (seed, epoch), so a pass is the same every time it is read.
  Every process and data worker reads the whole stream and decodes its share, and a run resumed mid-epoch reads
  the epoch's first records again to pass over them (logged): exact when the files and the `datasets` version
  are unchanged. For large data, `weightformer data pack` shards or a local folder read by index cost less.
  A stream is only as shuffled as its shard order and buffer make it: rows stored class after class need files
  written in a random order (or a buffer as large as the data).

Only local folders are read (nothing is downloaded). The images are the `image_column` (a `datasets.Image`
feature: encoded bytes or a path), the classes the names of the `label_column`'s `ClassLabel` feature. A split
named `val` is also found as `validation`, and the other way round.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from ...engine.data import StreamDataset, Unreadable
from .data import IndexedImages, open_image, transformed

__all__ = ["require_datasets", "HFDataset", "HFStream"]

_ALIASES = {"val": "validation", "validation": "val"}


def require_datasets() -> Any:
    """The `datasets` module, or a one-line error saying how to install it."""
    try:
        import datasets
    except ModuleNotFoundError:
        raise ModuleNotFoundError("reading Hugging Face datasets (hf:, hf-stream:) needs the datasets package: "
                                  "pip install 'weightformer[data]'") from None
    return datasets


def _local_folder(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"Hugging Face dataset folder {path} does not exist (only local folders are read).")
    return path


def _pick_split(splits: Any, split: str, where: Path) -> Any:
    """splits[split], or splits[its alias] (val / validation), or a one-line error listing the splits."""
    for name in (split, _ALIASES.get(split)):
        if name is not None and name in splits:
            return splits[name]
    raise FileNotFoundError(f"No {split!r} split in the Hugging Face dataset {where}: it has "
                            f"{', '.join(splits) or 'none'}.")


def _prepare(data: Any, where: Path, image_column: str, label_column: str) -> tuple[Any, list[str]]:
    """The dataset with undecoded images (we decode, so a bad image is counted, not raised), and class names."""
    datasets = require_datasets()
    features = data.features or {}
    for column in (image_column, label_column):
        if column not in features:
            raise ValueError(f"The Hugging Face dataset {where} has no column {column!r} (columns: "
                             f"{', '.join(features)}): set image_column / label_column.")
    if not isinstance(features[label_column], datasets.ClassLabel):
        raise ValueError(f"Column {label_column!r} of {where} is not a ClassLabel, so its class names are unknown.")
    return data.cast_column(image_column, datasets.Image(decode=False)), list(features[label_column].names)


def _image(value: dict[str, Any], description: str) -> Image.Image | Unreadable:
    """An undecoded `datasets.Image` value ({bytes, path}) as an RGB image."""
    if value is None:
        return Unreadable(f"{description} (no image)")
    source = value.get("bytes") or value.get("path")
    return open_image(source, description) if source else Unreadable(f"{description} (no image)")


class HFDataset(IndexedImages):
    """One split of a local Hugging Face dataset folder, read by index; items like `FolderDataset`'s."""

    def __init__(self, path: str | Path, split: str, transform: Any = None, image_column: str = "image",
                 label_column: str = "label") -> None:
        datasets = require_datasets()
        self.path, self.split, self.transform = _local_folder(path), split, transform
        if (self.path / "dataset_dict.json").is_file() or (self.path / "state.json").is_file():
            data = datasets.load_from_disk(str(self.path))  # written by save_to_disk: no conversion
        else:
            data = datasets.load_dataset(str(self.path))  # parquet / arrow / csv ... files
        if isinstance(data, datasets.Dataset):
            data = {"train": data}  # a single-split save_to_disk folder
        self.data, self.classes = _prepare(_pick_split(data, split, self.path), self.path, image_column,
                                           label_column)
        self.image_column, self.targets = image_column, list(self.data[label_column])

    def __len__(self) -> int:
        return len(self.targets)

    def original(self, index: int) -> Image.Image | Unreadable:
        return _image(self.data[index][self.image_column], f"{self.path} row {index}")


class HFStream(StreamDataset):
    """One split of a local Hugging Face dataset folder, streamed (see the module's doc)."""

    def __init__(self, path: str | Path, split: str, transform: Any = None, image_column: str = "image",
                 label_column: str = "label", buffer: int = 1000) -> None:
        datasets = require_datasets()
        self.path, self.split, self.transform, self.buffer = _local_folder(path), split, transform, buffer
        stream = _pick_split(datasets.load_dataset(str(self.path), streaming=True), split, self.path)
        self.stream, self.classes = _prepare(stream, self.path, image_column, label_column)
        self.image_column, self.label_column = image_column, label_column
        splits = stream.info.splits or {}
        known = next((splits[s].num_examples for s in (split, _ALIASES.get(split)) if s in splits), None)
        # An epoch needs the length; when the metadata does not say, count the labels (one column: a cheap pass)
        self.length = int(known) if known else sum(
            len(batch[label_column]) for batch in stream.select_columns([label_column]).iter(batch_size=1024))

    def __len__(self) -> int:
        return self.length

    def records(self, shuffle_seed: int | None) -> Iterator[tuple[dict[str, Any], int]]:
        """One pass: the source's order, or its shards in an order drawn from `shuffle_seed` and their records
        through a shuffle buffer (our own, not `datasets`' shuffle: the same pass for the same seed, whatever the
        `datasets` version, and without its pause when a shuffled pass ends)."""
        if shuffle_seed is None:
            yield from self._rows(self.stream)
            return
        rng = random.Random(shuffle_seed)
        shards = list(range(self.stream.num_shards))
        rng.shuffle(shards)
        rows = (row for shard in shards for row in self._rows(
            self.stream.shard(num_shards=len(shards), index=shard, contiguous=True)))
        yield from _buffer_shuffle(rows, self.buffer, rng)

    def _rows(self, stream: Any) -> Iterator[tuple[dict[str, Any], int]]:
        # .iter(), not iter(): datasets would split the stream among the DataLoader's workers by itself
        for batch in stream.iter(batch_size=64):
            yield from zip(batch[self.image_column], batch[self.label_column], strict=True)

    def load(self, record: tuple[dict[str, Any], int], seed: int) -> tuple[Any, int] | Unreadable:
        image = self.original(record)
        if isinstance(image, Unreadable):
            return image
        return transformed(image, self.transform, seed), record[1]

    def original(self, record: tuple[dict[str, Any], int]) -> Image.Image | Unreadable:
        value = record[0]
        return _image(value, f"{self.path} image {value.get('path') or ''}".strip() if value else str(self.path))


def _buffer_shuffle(items: Iterator[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """Items in a shuffled order, holding at most `size` at a time: each new item takes the place of a random one
    of the buffer, which is handed out; the rest are handed out in random order at the end."""
    buffer: list[Any] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        j = rng.randrange(size)
        yield buffer[j]
        buffer[j] = item
    rng.shuffle(buffer)
    yield from buffer
