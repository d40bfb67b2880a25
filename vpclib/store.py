"""Store: the work directory, cache keys and atomic writes.

Every artifact `X` has a manifest `X.params.json` holding its cache key: the resolved parameters
that change its result and a fingerprint of every input file it read (`FileSet` for frames,
`file_digest` for label, boxes and weight files, `folder_digest` for a model saved as a folder;
see `vpclib.keys`). Not the spelling of a path: the same data under another root, a trailing `/` or a moved folder is the same key. A stage
reuses `X` only when the key matches (`WorkDir.ready`, the one place that decides); a mismatch
is a `CacheMismatchError` listing each differing key with its old and new value (nothing is
overwritten unless asked with `overwrite=True`). Files are written to a temporary name and
renamed into place, so an interruption or a full disk never leaves a half-written artifact;
long stages write `X.partial` as they go and resume from it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import CacheMismatchError, MissingArtifactError, WorkDirError

MANIFEST_VERSION = 2
CONTENT_HASH_LIMIT = 4 * 2**30          # frames beyond 4 GiB in all: names, sizes and mtimes only


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; on success it is renamed to `path`.

    An OSError while writing (a full disk, a read-only folder) becomes a WorkDirError naming
    `path`; the temporary is removed and an older `path` is left as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        os.chmod(tmp, 0o644)                      # mkstemp makes 0600; artifacts are ordinary files
    except OSError as err:
        raise WorkDirError(write_error(path, err)) from None
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as err:
        if isinstance(err, WorkDirError):
            raise
        raise WorkDirError(write_error(path, err)) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_error(path, err: OSError) -> str:
    """One line for an OSError met while writing `path`: what happened and what to do."""
    if err.errno == errno.ENOSPC:
        return (f"disk full while writing {path}: nothing cached was lost (artifacts are written to a "
                f"temporary file first); free some space, or use another --work-dir, and rerun: it resumes")
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"cannot write {path} ({os.strerror(err.errno)}): the work directory must be writable; "
                f"pass --work-dir DIR with a folder you can write to")
    return f"cannot write {path}: {err.strerror or err}"


def write_json(path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=False, default=_json_default) + "\n")


def _json_default(x):
    import numpy as np
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, FileSet):
        return x.to_json()
    raise TypeError(type(x))


def read_json(path):
    return json.loads(Path(path).read_text())


def check_free_space(path, n_bytes: int, artifact) -> None:
    """WorkDirError naming `artifact` if the disk holding `path` has less than n_bytes (+ 64 MiB) free:
    checked before a long stage appends to its .partial, so a full disk never reaches h5py."""
    free = shutil.disk_usage(Path(path)).free
    if free < n_bytes + 64 * 2**20:
        raise WorkDirError(f"disk full: {artifact} needs about {n_bytes / 2**20:.0f} MiB more and "
                           f"{free / 2**20:.0f} MiB are free; what was finished is kept: free some space "
                           f"and rerun (it resumes), or use another --work-dir")


# ---------------------------------------------------------------------------------------------
# fingerprints of input files

def file_digest(path, chunk: int = 2**20) -> str:
    """'sha256:<16 hex> (<bytes> bytes)' of a file's content (label, boxes and weight files)."""
    h = hashlib.sha256()
    path = Path(path)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return f"sha256:{h.hexdigest()[:16]} ({path.stat().st_size} bytes)"


def folder_digest(path, chunk: int = 2**20) -> str:
    """'sha256:<16 hex> (<n> files, <bytes> bytes)' of a folder's files (a model exported as a
    folder, e.g. OpenVINO's .xml + .bin + metadata.yaml): each file's name relative to the folder,
    a NUL, its size and a NUL, then its content, in sorted order of the names. Where the folder
    lies does not enter; renaming, adding, removing or changing a file does."""
    root = Path(path)
    files = sorted((f.relative_to(root).as_posix(), f) for f in root.rglob("*") if f.is_file())
    h, total = hashlib.sha256(), 0
    for name, f in files:
        size = f.stat().st_size
        h.update(name.encode() + b"\0" + str(size).encode() + b"\0")
        with open(f, "rb") as stream:
            while block := stream.read(chunk):
                h.update(block)
        total += size
    return f"sha256:{h.hexdigest()[:16]} ({len(files)} files, {total} bytes)"


class FileSet:
    """Fingerprint of a set of input files (the frames of a split): their relative names, sizes and
    mtimes, and a hash of their content, computed only when needed (at commit, and when the names
    and sizes match but the mtimes do not: copied data). Paths are never part of it.

    files: [(relative name, path)], e.g. ("01/000.jpg", Path("/data/ped2/training/frames/01/000.jpg")).
    """

    _content_memo: dict = {}                    # (names, mtimes, first path) -> content hash, per process

    def __init__(self, files):
        self.files = [(str(rel), Path(p)) for rel, p in files]
        stats = [p.stat() for _, p in self.files]
        self.n_bytes = sum(s.st_size for s in stats)
        names = hashlib.sha256(json.dumps([[rel, s.st_size] for (rel, _), s in zip(self.files, stats)]).encode())
        mtimes = hashlib.sha256(json.dumps([s.st_mtime_ns for s in stats]).encode())
        self.summary = {"files": len(self.files), "bytes": self.n_bytes,
                        "names": names.hexdigest()[:16], "mtimes": mtimes.hexdigest()[:16]}

    def content(self) -> str | None:
        """sha256 of every file's bytes in order (None beyond CONTENT_HASH_LIMIT)."""
        if self.n_bytes > CONTENT_HASH_LIMIT:
            return None
        memo_key = (self.summary["names"], self.summary["mtimes"], str(self.files[0][1]) if self.files else "")
        if memo_key not in FileSet._content_memo:
            h = hashlib.sha256()
            for _, path in self.files:
                h.update(path.read_bytes())
            FileSet._content_memo[memo_key] = h.hexdigest()[:16]
        return FileSet._content_memo[memo_key]

    def to_json(self) -> dict:
        return {**self.summary, "content": self.content()}

    def matches(self, old) -> bool:
        """Same files as the fingerprint `old` (a to_json dict): same names and sizes, and the same
        mtimes or, failing that, the same content."""
        if not isinstance(old, dict) or any(old.get(k) != self.summary[k] for k in ("files", "bytes", "names")):
            return False
        if old.get("mtimes") == self.summary["mtimes"]:
            return True
        return old.get("content") is not None and old.get("content") == self.content()

    @staticmethod
    def describe(value) -> str:
        if not isinstance(value, dict) or "files" not in value:
            return _short(value)
        content = value.get("content")
        return (f"{value['files']} files, {value['bytes'] / 2**20:.2f} MiB, names {value['names']}, "
                + (f"content {content}" if content else f"mtimes {value['mtimes']}"))


def _short(value, width: int = 70) -> str:
    text = json.dumps(value, default=_json_default)
    return text if len(text) <= width else text[:width - 3] + "..."


# ---------------------------------------------------------------------------------------------
# the work directory

class WorkDir:
    """The folder holding a run's artifacts: objects/, features/, memory.npz, scores, metrics.

    `decide(name, key)` is the one place where a cached artifact is judged: "reuse", "resume" (a
    matching .partial), or "make"; a mismatch raises CacheMismatchError unless overwrite. `ready`
    and `check_partial` are what the stages call, `require` what reads a finished stage's artifact
    back; `decide` alone writes nothing, so a whole run can be checked before anything is written.
    """

    def __init__(self, root, overwrite: bool = False):
        self.root = Path(root).expanduser()
        self.overwrite = overwrite
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise WorkDirError(write_error(self.root, err)) from None

    def path(self, name: str) -> Path:
        return self.root / name

    @staticmethod
    def manifest(path: Path) -> Path:
        return path.with_name(path.name + ".params.json")

    def check_writable(self) -> None:
        """WorkDirError if the work directory cannot be written (before a stage starts)."""
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise WorkDirError(write_error(self.root, OSError(errno.EACCES, "not writable")))

    # the decision -------------------------------------------------------------------------

    def differences(self, name: str, key: dict) -> list[tuple[str, object, object]] | None:
        """[(key name, old, new)] where `name`'s manifest differs from `key`; None if no manifest."""
        manifest = self.manifest(self.path(name))
        if not manifest.exists():
            return None
        made_with = read_json(manifest)
        if made_with.get("version") != MANIFEST_VERSION or not isinstance(made_with.get("key"), dict):
            return [("manifest", "made by an older vpc (no input fingerprints)", f"version {MANIFEST_VERSION}")]
        old = made_with["key"]
        out = []
        for k in sorted(set(old) | set(key)):
            new = key.get(k, "(absent)")
            before = old.get(k, "(absent)")
            same = new.matches(before) if isinstance(new, FileSet) else json_equal(before, new)
            if not same:
                out.append((k, before, new.to_json() if isinstance(new, FileSet) else new))
        return out

    def decide(self, name: str, key: dict) -> str:
        """'reuse' (name exists, made with `key`), 'resume' (name.partial made with `key`) or 'make'.

        Raises CacheMismatchError naming the file and each differing key (old -> new) when name or
        its .partial was made with another key, unless overwrite. Writes nothing.
        """
        path = self.path(name)
        if path.exists():
            diff = self.differences(name, key)
            if diff == []:
                return "reuse"
            if diff is not None and not self.overwrite:
                raise self._mismatch(path, diff, "Use another --work-dir, or --overwrite to recompute it.")
        partial = name + ".partial"
        if self.path(partial).exists():
            diff = self.differences(partial, key)
            if diff == []:
                return "resume"
            if diff is not None and not self.overwrite:
                raise self._mismatch(self.path(partial), diff, "It is an interrupted run: use another "
                                     "--work-dir, or --overwrite to discard it.")
        return "make"

    @staticmethod
    def _mismatch(path, diff, advice: str) -> CacheMismatchError:
        changes = "; ".join(f"{k}: {FileSet.describe(old)} -> {FileSet.describe(new)}" for k, old, new in diff)
        return CacheMismatchError(f"{path} was made from other inputs or parameters (differing: {changes}). {advice}")

    def ready(self, name: str, key: dict) -> bool:
        """True if artifact `name` exists and was made with `key`; raise if made with another."""
        return self.decide(name, key) == "reuse"

    def check_partial(self, name: str, key: dict) -> bool:
        """True if `name.partial` exists with this key (resume); a stale one is removed."""
        if self.decide(name, key) == "resume":
            return True
        partial = self.path(name + ".partial")
        partial.unlink(missing_ok=True)
        self.manifest(partial).unlink(missing_ok=True)
        return False

    def require(self, name: str, key: dict, made_by: str) -> Path:
        """The path of finished artifact `name`, made with `key` (a stage's input read back); a
        MissingArtifactError naming it and `made_by`, the stage that makes it, when it is absent."""
        if not self.ready(name, key):
            raise MissingArtifactError(f"{self.path(name)} is not finished: run {made_by} with these "
                                       f"parameters first (or `vpc run`)")
        return self.path(name)

    def commit(self, name: str, key: dict) -> None:
        """Record the key of a finished artifact (call after writing it)."""
        write_json(self.manifest(self.path(name)), {"version": MANIFEST_VERSION, "key": key})

def finished_artifacts(root) -> list[str]:
    """Artifacts under `root` with a manifest (finished), and .partial ones (resumable), relative, sorted."""
    root = Path(root)
    out = []
    for manifest in sorted(root.rglob("*.params.json")):
        artifact = manifest.with_name(manifest.name.removesuffix(".params.json"))
        if artifact.exists():
            out.append(artifact.relative_to(root).as_posix())
    return out


def json_equal(a, b) -> bool:
    """Equality of two JSON-able values as they are stored (tuples == lists, 1 == 1.0)."""
    return json.loads(json.dumps(a, sort_keys=True, default=_json_default)) == \
        json.loads(json.dumps(b, sort_keys=True, default=_json_default))
