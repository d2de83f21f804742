"""Where classification data comes from: one `data_dir` string selects the source.

- `PATH`: an ImageNet-layout folder, `<split>/<class>/<image>`; `synthetic`: the embedded one (generated once).
- `wds:PATH` (or a PATH holding `manifest.json`): tar shards written by `weightformer data pack`, read by index
  (the offsets of the manifest's index).
- `hf:PATH`: a local Hugging Face folder (`save_to_disk`, or parquet / arrow files), read by index (Arrow).
- `hf-stream:PATH`: the same folder through `load_dataset(..., streaming=True)`, read in passes.

Resumption is exact for all of them (for a stream: when its files are unchanged; a resumed epoch reads its
first records again to pass over them).

Every source gives items `(image, class)` or `Unreadable`, takes the sample seeds of the engine's sampler, and
names its classes: folder names, the manifest's list, or the `ClassLabel` names of a Hugging Face dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from .data import FolderDataset, check_splits
from .shards import MANIFEST, ShardDataset
from .synthetic import dataset_folder

__all__ = ["DataSource", "PREFIXES"]

PREFIXES = {"wds:": "wds", "hf:": "hf", "hf-stream:": "hf-stream"}


@dataclass(frozen=True)
class DataSource:
    """A parsed `data_dir` and the options of its kind of source."""

    kind: str  # "folder", "wds", "hf" or "hf-stream"
    path: Path
    shard_order: str = "global"  # wds: "global" (uniform over samples) or "shards" (a few shards at a time)
    shard_window: int = 4
    image_column: str = "image"  # hf, hf-stream
    label_column: str = "label"
    stream_buffer: int = 1000  # hf-stream: shuffle buffer

    @classmethod
    def parse(cls, data_dir: str, synthetic: dict[str, Any] | None = None, **options: Any) -> DataSource:
        """The source `data_dir` names (see the module's table); "synthetic" is generated here if needed."""
        for prefix, kind in PREFIXES.items():
            if data_dir.startswith(prefix):
                if not data_dir[len(prefix):]:
                    raise ValueError(f"data_dir {data_dir!r} names no folder: write {prefix}/path/to/folder.")
                return cls(kind, Path(data_dir[len(prefix):]).expanduser(), **options)
        path = dataset_folder(data_dir, synthetic or {})
        kind = "wds" if (path / MANIFEST).is_file() else "folder"
        return cls(kind, path, **options)

    @classmethod
    def from_config(cls, cfg: Any) -> DataSource:
        """The source of a ClassificationConfig."""
        return cls.parse(cfg.data_dir, cfg.synthetic, shard_order=cfg.shard_order, shard_window=cfg.shard_window,
                         image_column=cfg.image_column, label_column=cfg.label_column,
                         stream_buffer=cfg.stream_buffer)

    def open(self, split: str, transform: Any) -> Dataset:
        """One split as a dataset (a StreamDataset for hf-stream); it has `classes`."""
        if self.kind == "folder":
            check_splits(self.path, None, split)
            return FolderDataset(str(self.path / split), transform=transform)
        if self.kind == "wds":
            return ShardDataset(self.path, split, transform, self.shard_order, self.shard_window)
        from .hf import HFDataset, HFStream  # datasets is optional: imported when asked for

        if self.kind == "hf":
            return HFDataset(self.path, split, transform, self.image_column, self.label_column)
        return HFStream(self.path, split, transform, self.image_column, self.label_column, self.stream_buffer)

    def open_splits(self, train_split: str, val_split: str, train_transform: Any,
                    val_transform: Any) -> tuple[Dataset, Dataset, list[str]]:
        """The training and validation sets, and the class names (the same in both, or a one-line error)."""
        if self.kind == "folder":  # one check of the whole layout first, with the messages it has for folders
            check_splits(self.path, train_split, val_split)
        train, val = self.open(train_split, train_transform), self.open(val_split, val_transform)
        if train.classes != val.classes:
            only_train = sorted(set(train.classes) - set(val.classes))
            only_val = sorted(set(val.classes) - set(train.classes))
            raise ValueError(f"The {train_split} and {val_split} splits of {self} have different classes: only in "
                             f"{train_split}: {only_train[:10] or 'none'}; only in {val_split}: "
                             f"{only_val[:10] or 'none'} (or the same in another order).")
        return train, val, list(train.classes)

    def __str__(self) -> str:
        return str(self.path) if self.kind == "folder" else f"{self.kind}:{self.path}"
