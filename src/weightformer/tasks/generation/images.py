"""Image sets read batch by batch, never whole, and an npz writer that streams its images in.

ADM's evaluation suite (Dhariwal & Nichol, 2021, guided-diffusion's `evaluations/`) keeps samples and reference
batches as npz files whose `arr_0` holds uint8 NHWC images (and `arr_1` the class ids of samples). FID-50K's
50,000 samples at 256² are 9.8 GB in that layout, so nothing here loads them: the npy header inside the zip gives
the shape, and the data that follows is read a batch at a time through `zipfile` (a compressed npz works too).
Reads go through the file, not `np.memmap`: pages of a mapped file count in the process's resident memory for as
long as the kernel leaves them mapped, which is what the 3 GB figure of `benchmarks/SCALE.md` measures.

    open_images(path)      an npz (arr_0), a folder of images (searched recursively) or a .txt list of npz shards
    NpzWriter(path, ...)   writes arr_0 as it comes, then small arrays (arr_1), renamed into place when complete
"""

from __future__ import annotations

import os
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

__all__ = ["ImageSet", "NpzImages", "FolderImages", "ShardList", "open_images", "load_images", "npz_member_header",
           "NpzWriter", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".JPEG"}


class ImageSet(ABC):
    """uint8 (H, W, 3) images, read in batches (N, H, W, 3) in a fixed order; `labels()` their class ids, if any."""

    path: Path

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def batches(self, batch_size: int) -> Iterator[np.ndarray]: ...

    def labels(self) -> np.ndarray | None:
        return None


def npz_member_header(archive: zipfile.ZipFile, name: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of member `name`.npy, read from its npy header without its data."""
    with archive.open(f"{name}.npy") as member:
        return _read_npy_header(member)


def _read_npy_header(stream: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(stream)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(stream)
    raise ValueError(f"npy format version {version} is not supported (1.0 and 2.0 are)")


class NpzImages(ImageSet):
    """The images of an npz's `arr_0` (ADM's layout), read lazily; `labels()` is its `arr_1` when it has one."""

    def __init__(self, path: str | Path, key: str = "arr_0"):
        self.path, self.key = Path(path), key
        try:
            with zipfile.ZipFile(self.path) as archive:
                names = {n.removesuffix(".npy") for n in archive.namelist()}
                if key not in names:
                    raise ValueError(f"{self.path} holds no images under {key} (it holds {', '.join(sorted(names))}).")
                shape, fortran, dtype = npz_member_header(archive, key)
        except (zipfile.BadZipFile, EOFError, OSError) as error:
            raise ValueError(f"{self.path} is not a readable npz ({type(error).__name__}: {error}).") from None
        if len(shape) != 4 or shape[-1] != 3 or dtype != np.uint8 or fortran:
            raise ValueError(f"{self.path}: {key} must be uint8 images (N, H, W, 3), got {dtype} {shape}.")
        self.shape: tuple[int, int, int, int] = shape
        self._names = names

    def __len__(self) -> int:
        return self.shape[0]

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        item = self.shape[1:]
        size = int(np.prod(item))
        try:
            with zipfile.ZipFile(self.path) as archive, archive.open(f"{self.key}.npy") as member:
                _read_npy_header(member)
                for start in range(0, len(self), batch_size):
                    count = min(batch_size, len(self) - start)
                    buffer = bytearray(count * size)  # writable: torch.from_numpy takes it as it is
                    if _read_into(member, buffer) != len(buffer):
                        raise ValueError(f"{self.path}: {self.key} ends after {start} of {len(self)} images (a "
                                         "truncated file?).")
                    yield np.frombuffer(buffer, dtype=np.uint8).reshape(count, *item)
        except zipfile.BadZipFile as error:  # a CRC mismatch is only known at the end of the member
            raise ValueError(f"{self.path} is damaged ({error}).") from None

    def labels(self) -> np.ndarray | None:
        if "arr_1" not in self._names or self.key != "arr_0":
            return None
        with np.load(self.path) as npz:
            return npz["arr_1"]


def _read_into(stream: IO[bytes], buffer: bytearray) -> int:
    """Fill `buffer` from `stream` (zip members return short reads); the number of bytes read."""
    view, filled = memoryview(buffer), 0
    while filled < len(buffer):
        chunk = stream.read(min(len(buffer) - filled, 1 << 24))
        if not chunk:
            break
        view[filled:filled + len(chunk)] = chunk
        filled += len(chunk)
    return filled


class FolderImages(ImageSet):
    """The images under a folder (recursively, sorted), converted to RGB; images of another size than the first are
    resized to it (bicubic). `limit` keeps about that many files, evenly spaced (every class folder keeps its
    share)."""

    def __init__(self, path: str | Path, limit: int | None = None):
        self.path = Path(path)
        files = sorted(p for p in self.path.rglob("*") if p.suffix in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise ValueError(f"No images (png, jpg, ...) under {self.path}.")
        if limit is not None and len(files) > limit:
            files = files[:: len(files) // limit][:limit]
        self.files = files
        self._size: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.files)

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        for start in range(0, len(self.files), batch_size):
            yield np.stack([self._read(path) for path in self.files[start:start + batch_size]])

    def _read(self, path: Path) -> np.ndarray:
        with Image.open(path) as image:
            image = image.convert("RGB")
            self._size = self._size or image.size
            return np.asarray(image if image.size == self._size else image.resize(self._size, Image.BICUBIC))


class ShardList(ImageSet):
    """The images of several npz files in turn, listed one per line in a .txt file (paths relative to it; blank
    lines and lines starting with # are skipped). All must hold images of one size."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        lines = [line.strip() for line in self.path.read_text().splitlines()]
        entries = [self.path.parent / line for line in lines if line and not line.startswith("#")]
        if not entries:
            raise ValueError(f"{self.path} lists no npz shards.")
        self.shards = [NpzImages(entry) for entry in entries]
        sizes = {shard.shape[1:] for shard in self.shards}
        if len(sizes) > 1:
            raise ValueError(f"{self.path} lists shards of different image sizes: {', '.join(map(str, sizes))}.")

    def __len__(self) -> int:
        return sum(len(shard) for shard in self.shards)

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        for shard in self.shards:
            yield from shard.batches(batch_size)

    def labels(self) -> np.ndarray | None:
        labels = [shard.labels() for shard in self.shards]
        return None if any(part is None for part in labels) else np.concatenate(labels)


def open_images(source: str | Path, limit: int | None = None) -> ImageSet:
    """An npz of images (arr_0, ADM's layout), a folder of images or a .txt list of npz shards, opened lazily."""
    source = Path(source)
    if source.is_file() and source.suffix == ".npz":
        return NpzImages(source)
    if source.is_file() and source.suffix == ".txt":
        return ShardList(source)
    if source.is_dir():
        return FolderImages(source, limit)
    raise ValueError(f"{source} is neither an .npz of samples, a folder of images nor a .txt list of npz shards.")


def load_images(source: str | Path, limit: int | None = None) -> np.ndarray:
    """All images of `source` (see `open_images`) as one (N, H, W, 3) uint8 array: for small sets only."""
    images = open_images(source, limit)
    return np.concatenate(list(images.batches(256)))


class NpzWriter:
    """An npz in ADM's layout written as it comes: `count` images of `item_shape` under arr_0, streamed in by
    `write`, then small arrays by `put` (arr_1: labels). The file is a temporary one renamed into place on a clean
    exit, so an interrupted write leaves no npz that looks complete. Stored, not compressed, as np.savez does.

        with NpzWriter(path, 50_000, (256, 256, 3)) as out:
            for batch in batches: out.write(batch)
            out.put("arr_1", labels)
    """

    def __init__(self, path: str | Path, count: int, item_shape: tuple[int, ...], dtype: Any = np.uint8):
        self.path, self.count = Path(path), count
        self.item_shape, self.dtype = tuple(item_shape), np.dtype(dtype)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp")
        self.written = 0

    def __enter__(self) -> NpzWriter:
        self._archive = zipfile.ZipFile(self.tmp, "w", zipfile.ZIP_STORED, allowZip64=True)
        self._member = self._archive.open("arr_0.npy", "w", force_zip64=True)  # its size is unknown to zipfile
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": (self.count, *self.item_shape)}
        np.lib.format.write_array_header_1_0(self._member, header)
        return self

    def write(self, images: np.ndarray) -> None:
        if images.shape[1:] != self.item_shape or images.dtype != self.dtype:
            raise ValueError(f"{self.path}: expected {self.dtype} images of shape {self.item_shape}, got "
                             f"{images.dtype} {images.shape[1:]}.")
        if self.written + len(images) > self.count:
            raise ValueError(f"{self.path}: more than the {self.count} images announced.")
        self._member.write(memoryview(np.ascontiguousarray(images)).cast("B"))
        self.written += len(images)

    def put(self, name: str, array: np.ndarray) -> None:
        self._finish_images()
        with self._archive.open(f"{name}.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)

    def _finish_images(self) -> None:
        if self._member is None:
            return
        if self.written != self.count:
            raise ValueError(f"{self.path}: {self.written} images written of the {self.count} announced.")
        self._member.close()
        self._member = None

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._finish_images()
        finally:
            if self._member is not None:
                self._member.close()
            self._archive.close()
            if exc_type is None and self.written == self.count:
                os.replace(self.tmp, self.path)
            else:
                self.tmp.unlink(missing_ok=True)
