"""Checkpoint files: durable renames, stale temporary files, file systems without hard links."""

from __future__ import annotations

import errno
import os

import torch

from weightformer.engine import checkpoint as ckpt
from weightformer.engine.checkpoint import CheckpointDir


def test_each_rename_is_followed_by_an_fsync_of_its_folder(tmp_path, monkeypatch):
    events = []
    real_replace, real_fsync_dir = os.replace, ckpt._fsync_dir
    monkeypatch.setattr(ckpt.os, "replace", lambda a, b: (events.append(("rename", os.path.basename(b))),
                                                          real_replace(a, b))[1])
    monkeypatch.setattr(ckpt, "_fsync_dir", lambda p: (events.append(("fsync dir", str(p))), real_fsync_dir(p))[1])
    folder = CheckpointDir(tmp_path / "checkpoints")
    folder.save({"x": torch.ones(2)}, step=3, is_best=True)
    where = str(tmp_path / "checkpoints")
    assert events == [("rename", "step-00000003.pth"), ("fsync dir", where), ("rename", "last.pth"),
                      ("fsync dir", where), ("rename", "best.pth"), ("fsync dir", where)]


def test_stale_temporary_files_are_removed_on_the_next_save(tmp_path):
    folder = CheckpointDir(tmp_path / "checkpoints")
    folder.path.mkdir()
    stale = [folder.path / ".step-00000002.pth.tmp-4242", folder.path / ".last.pth.tmp-4242"]
    for p in stale:
        p.write_bytes(b"half a checkpoint")
    keep = folder.path / "notes.txt"
    keep.write_text("mine")
    folder.save({"x": torch.ones(2)}, step=4)
    assert not any(p.exists() for p in stale) and keep.read_text() == "mine"
    assert sorted(p.name for p in folder.path.iterdir()) == ["last.pth", "notes.txt", "step-00000004.pth"]


def test_without_hard_links_last_and_best_are_copies(tmp_path, monkeypatch):
    def no_links(source, target):
        raise OSError(errno.EPERM, "Operation not permitted", str(target))

    monkeypatch.setattr(ckpt.os, "link", no_links)
    folder = CheckpointDir(tmp_path / "checkpoints", keep=1)
    folder.save({"x": torch.full((2,), 1.0)}, step=1, is_best=True)
    folder.save({"x": torch.full((2,), 2.0)}, step=2)
    assert [p.name for p in folder.numbered()] == ["step-00000002.pth"]  # pruned; best.pth survives as a copy
    assert torch.load(folder.best, weights_only=True)["x"].tolist() == [1.0, 1.0]
    assert torch.load(folder.last, weights_only=True)["x"].tolist() == [2.0, 2.0]
    assert os.stat(folder.last).st_ino != os.stat(folder.numbered()[0]).st_ino
    assert not [p for p in folder.path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_other_link_errors_are_not_hidden(tmp_path, monkeypatch):
    def disk_full(source, target):
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(ckpt.os, "link", disk_full)
    folder = CheckpointDir(tmp_path / "checkpoints")
    try:
        folder.save({"x": torch.ones(1)}, step=1)
    except OSError as error:
        assert error.errno == errno.ENOSPC
    else:
        raise AssertionError("a full disk must not pass silently")
