"""Where a batch render keeps its syntheses' checkpoints: in the output root, one file per
item, so the retry of an item lost with its worker resumes on any worker that sees the
root (the engine decides what a checkpoint holds and when to take one,
``engine/checkpoint.py``; this module only gives it a place)."""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Iterable

from nst_engine.engine.checkpoint import AUTO_EVERY_SECONDS, AUTO_MIN_PREDICTED_SECONDS, CheckpointPolicy
from nst_engine.storage.files import TMP_PREFIX
from nst_engine.storage.roots import OutputRoot

log = logging.getLogger(__name__)

#: Folder of the output root that holds checkpoints, ``<item_id>.pt`` each.
CHECKPOINT_DIR = ".nst-checkpoints"


def checkpoint_path(item_id: str) -> str:
    """Where the checkpoint of ``item_id`` lives, relative to the output root. Keyed by
    the content-addressed item id, so the same work finds its checkpoint after a move."""
    return f"{CHECKPOINT_DIR}/{item_id}.pt"


class ItemCheckpoint:
    """The checkpoint of one item's attempt: the engine's policy, and its removal once the
    image is written. Saves go through ``root.write_bytes`` (atomic: a worker killed
    mid-save leaves the previous checkpoint whole). ``every``: seconds, ``None`` for auto
    (only syntheses predicted to take minutes), 0 for off (neither read, written nor
    removed)."""

    def __init__(self, root: OutputRoot, item_id: str, every: float | None) -> None:
        self.root = root
        self.item_id = item_id
        self.path = checkpoint_path(item_id)
        self.touched = False  # a checkpoint was found or saved: there is one to remove
        self.policy: CheckpointPolicy | None = None
        if every is None:
            self.policy = CheckpointPolicy(
                AUTO_EVERY_SECONDS,
                self._load,
                self._save,
                min_predicted_seconds=AUTO_MIN_PREDICTED_SECONDS,
                discard=self._remove,
            )
        elif every > 0:
            self.policy = CheckpointPolicy(every, self._load, self._save, discard=self._remove)

    def _load(self) -> bytes | None:
        try:
            data = self.root.read_bytes(self.path)
        except FileNotFoundError:
            return None
        self.touched = True
        return data

    def _save(self, data: bytes) -> None:
        self.touched = True
        self.root.write_bytes(self.path, data)

    def _remove(self) -> None:
        """The engine found the checkpoint unusable: gone now, not read by the next attempt
        (an ``OSError`` is the engine's to log)."""
        remove_checkpoints(self.root, [self.item_id])
        self.touched = False  # nothing left to remove unless a save follows

    def discard(self) -> None:
        """After the item's image is written. Only when this attempt found or saved a
        checkpoint, so the many short items of a batch cost no listing each. A failure is
        only logged: the image is done, and a leftover checkpoint costs disk space, never
        a wrong result (``--force`` removes it)."""
        if not self.touched:
            return
        try:
            remove_checkpoints(self.root, [self.item_id])
        except OSError as exc:
            log.warning("could not remove the checkpoint of %s: %s", self.item_id, exc)


def remove_checkpoints(root: OutputRoot, item_ids: Iterable[str]) -> int:
    """Delete the checkpoints of ``item_ids`` and any temporary a killed save left of
    them (one listing, however many items); returns how many files went."""
    names = {posixpath.basename(checkpoint_path(i)) for i in item_ids}
    if not names:
        return 0
    removed = 0
    for path in root.list_files(CHECKPOINT_DIR):
        base = posixpath.basename(path)
        # a temporary is named TMP_PREFIX + a hex uuid + "-" + the target's name
        target = base[len(TMP_PREFIX) :].partition("-")[2] if base.startswith(TMP_PREFIX) else base
        if target in names:
            root.delete(path)
            removed += 1
    return removed
