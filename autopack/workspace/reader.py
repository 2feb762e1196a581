"""Reading many files of one commit with few git processes.

A Builder's context, its edits' checks and the governance pass all read files of
the phase's parent commit, often the same ones. :class:`TreeReader` lists the
tree once, reads the contents of many files with one ``git cat-file --batch``,
and never reads a file twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from autopack.workspace.git import Git, decode_text, is_file_mode

__all__ = ["TreeReader"]


class TreeReader:
    """The files of ``commit`` in ``repo``, read at most once each.

    :meth:`read` answers as :meth:`Git.read_blob` does: the text of a file or
    symlink (undecodable bytes as surrogate escapes), ``None`` for a path that is
    not a file there (absent, a directory, a submodule).
    """

    def __init__(self, repo: Path, commit: str) -> None:
        self._git = Git(repo)
        self._commit = commit
        self._objects: dict[str, tuple[str, str]] | None = None
        self._entries: dict[str, str] | None = None
        self._texts: dict[str, str | None] = {}

    @property
    def commit(self) -> str:
        """The commit whose files this reads."""
        return self._commit

    def entries(self) -> dict[str, str]:
        """Every non-tree entry as ``{path: mode}`` (as :meth:`Git.list_entries`); the same dict each time."""
        if self._entries is None:
            self._entries = {path: mode for path, (mode, _oid) in self._listing().items()}
        return self._entries

    def _listing(self) -> dict[str, tuple[str, str]]:
        if self._objects is None:
            self._objects = self._git.list_objects(self._commit)
        return self._objects

    def read(self, path: str) -> str | None:
        """The text of ``path``, or ``None`` when it is not a file at the commit."""
        return self.read_many([path])[path]

    def read_many(self, paths: Iterable[str]) -> dict[str, str | None]:
        """``{path: text or None}`` for ``paths``; the ones not read before cost one git call in all."""
        wanted = list(dict.fromkeys(paths))
        listing = self._listing()
        todo: dict[str, str] = {}
        for path in wanted:
            if path in self._texts:
                continue
            mode, oid = listing.get(path, ("", ""))
            if not is_file_mode(mode):
                self._texts[path] = None
            else:
                todo[path] = oid
        if todo:
            blobs = self._git.read_objects(list(dict.fromkeys(todo.values())))
            for path, oid in todo.items():
                data = blobs.get(oid)
                self._texts[path] = None if data is None else decode_text(data)
        return {path: self._texts[path] for path in wanted}
