"""One storage interface for uploads, job outputs and prepared datasets, over fsspec.

Unset (`KD_STORAGE_URL`, the default), the storage is the local folders themselves: uploads and job outputs
under the artifact dir, prepared datasets under the prepared dir, all on local disk (or one mount shared by
the API and every worker, as before). Nothing is copied; every method here is a no-op or a local check.

Set to any fsspec URL (`file:///mnt/shared/kd`, `s3://bucket/kd` with s3fs installed, ...), it is the one
place every host shares, and each host keeps local copies of what it reads:

  uploads/<id><ext>       the API publishes an upload once it passed its checks, before its record exists;
                          a worker fetches it into its artifact dir on first use
  jobs/<job id>/<name>    a worker publishes a job's outputs before the job is marked succeeded; the API
                          (a download) or a worker (a teacher job's student) fetches them on first use
  prepared/<key>/<file>   a worker publishes a prepared store once built (meta.json last); a worker on
                          another host fetches its shards into its own prepared dir and memory-maps them
                          there: an object store cannot be mapped, a local file can

Whole files, read and written sequentially. A fetch writes a temporary name beside its target and renames
it, and a published folder counts as present only once its last file (meta.json) is there, so no reader
ever opens a half-copied file; a host killed mid-copy leaves a `.tmp-*` name that nobody reads (the
prepared store removes stale ones, kdcore.datasets.store.STALE_S).
"""
from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

import fsspec


class Storage:
    def __init__(self, url: str | None = None):
        self.url = url or None
        self.fs, self.root = fsspec.core.url_to_fs(url) if url else (None, "")

    @property
    def shared(self) -> bool:
        """Whether a storage apart from the local folders is configured (copies are made)."""
        return self.fs is not None

    def key(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def publish(self, local: Path, *parts: str) -> None:
        """Copies a local file to parts (a temporary name, then moved: readers see all of it or nothing)."""
        if self.fs is None:
            return
        dest = self.key(*parts)
        self.fs.makedirs(dest.rsplit("/", 1)[0], exist_ok=True)
        tmp = f"{dest}.tmp-{secrets.token_hex(6)}"
        self.fs.put_file(str(local), tmp)
        self.fs.mv(tmp, dest)

    def fetch(self, local: Path, *parts: str) -> bool:
        """Makes sure `local` exists: True when it did, or was copied from parts; False when neither holds."""
        if local.exists():
            return True
        if self.fs is None or not self.fs.exists(self.key(*parts)):
            return False
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".tmp-{local.name}-{secrets.token_hex(6)}")
        try:
            self.fs.get_file(self.key(*parts), str(tmp))
            os.replace(tmp, local)
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def publish_dir(self, local: Path, *parts: str, last: str = "meta.json") -> None:
        """Copies every file of a local folder to parts, `last` at the end: its presence marks the folder whole."""
        if self.fs is None:
            return
        files = sorted((f for f in local.iterdir() if f.is_file()), key=lambda f: f.name == last)
        for f in files:
            self.publish(f, *parts, f.name)

    def fetch_dir(self, local: Path, *parts: str, last: str = "meta.json") -> bool:
        """Copies a published folder (one whose `last` file is there) to `local`, through a temporary folder
        renamed into place. True when `local` now holds it (copied here, or by another process meanwhile)."""
        if self.fs is None or not self.fs.exists(self.key(*parts, last)):
            return False
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.parent / f".tmp-{local.name}-{secrets.token_hex(6)}"
        tmp.mkdir()
        try:
            for src in self.fs.ls(self.key(*parts), detail=False):
                name = str(src).rstrip("/").rsplit("/", 1)[-1]
                if ".tmp-" not in name:  # a publish in flight elsewhere
                    self.fs.get_file(src, str(tmp / name))
            try:
                os.rename(tmp, local)
            except OSError:  # another process of this host copied it first: theirs stays
                if not local.exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return True

    def remove(self, *parts: str) -> None:
        if self.fs is not None and self.fs.exists(self.key(*parts)):
            self.fs.rm(self.key(*parts), recursive=True)
