"""Copy an ImageNet-layout folder into the two local Hugging Face forms `--data-dir hf:` reads (for the data
benchmarks of benchmarks/SCALE.md): OUT/disk (`save_to_disk`, rows in the folder's order) and OUT/parquet
(`<split>-NNNNN-of-NNNNN.parquet`, `--parquet-shards` files per split, rows in a random order), each image's file
bytes in its row.

    python benchmarks/hf_copy.py DIR OUT [--parquet-shards 4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import datasets

from weightformer.tasks.classification.data import FolderDataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--parquet-shards", type=int, default=4)
    args = parser.parse_args()
    splits = sorted(p.name for p in args.source.iterdir() if p.is_dir())
    classes = FolderDataset(str(args.source / splits[0])).classes
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=classes)})
    copies = {}
    for split in splits:
        items = FolderDataset(str(args.source / split)).samples
        # The images' bytes in the tables (a path would leave the files outside: not what a real copy holds)
        images = [{"bytes": Path(p).read_bytes(), "path": Path(p).name} for p, _ in items]
        copies[split] = datasets.Dataset.from_dict({"image": images, "label": [t for _, t in items]},
                                                   features=features)
    datasets.DatasetDict(copies).save_to_disk(str(args.output / "disk"))
    (args.output / "parquet").mkdir(parents=True)
    n = args.parquet_shards
    for split, data in copies.items():
        # Parquet rows in a random (fixed) order: a stream is shuffled only by its shard order and its buffer, and
        # the folder lists its images class after class
        data = data.shuffle(seed=0).flatten_indices()
        for i in range(n):
            path = args.output / "parquet" / f"{split}-{i:05d}-of-{n:05d}.parquet"
            data.shard(n, i, contiguous=True).to_parquet(str(path))


if __name__ == "__main__":
    main()
