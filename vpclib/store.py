"""Store: the work directory, cache keys and atomic writes.

Every artifact `X` has a manifest `X.params.json` holding the parameters that made it. A stage
reuses `X` only when the manifest matches its parameters exactly; a mismatch is a
`CacheMismatchError` (nothing is overwritten unless asked with `overwrite=True`). Files are
written to a temporary name and renamed into place, so an interruption never leaves a
half-written artifact; long stages write `X.partial` as they go and resume from it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from .config import params_hash
from .errors import CacheMismatchError


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; on success it is renamed to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)                          # mkstemp makes 0600; artifacts are ordinary files
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=False, default=_json_default) + "\n")


def _json_default(x):
    import numpy as np
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(type(x))


def read_json(path):
    return json.loads(Path(path).read_text())


class WorkDir:
    """The folder holding a run's artifacts: objects/, features/, memory.npz, scores, metrics."""

    def __init__(self, root, overwrite: bool = False):
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)
        self.overwrite = overwrite

    def path(self, name: str) -> Path:
        return self.root / name

    @staticmethod
    def manifest(path: Path) -> Path:
        return path.with_name(path.name + ".params.json")

    def ready(self, name: str, params: dict) -> bool:
        """True if artifact `name` exists and was made with `params`; raise if made with others."""
        path = self.path(name)
        manifest = self.manifest(path)
        if not path.exists():
            return False
        if not manifest.exists():
            return False                        # an artifact without manifest was never finished
        made_with = read_json(manifest)
        if made_with.get("key") == params_hash(params):
            return True
        if self.overwrite:
            return False
        changed = sorted(k for k in set(params) | set(made_with.get("params", {}))
                         if params.get(k) != made_with.get("params", {}).get(k))
        raise CacheMismatchError(
            f"{path} was made with other parameters (differing: {', '.join(changed) or 'unknown'}). "
            f"Use another --work-dir, or --overwrite to recompute it.")

    def commit(self, name: str, params: dict) -> None:
        """Record the parameters of a finished artifact (call after writing it)."""
        write_json(self.manifest(self.path(name)), {"key": params_hash(params), "params": params})

    def check_partial(self, name: str, params: dict) -> bool:
        """True if `name.partial` exists with these params (resume); remove a stale one if overwriting."""
        partial = self.path(name + ".partial")
        manifest = self.manifest(partial)
        if not partial.exists() or not manifest.exists():
            if partial.exists():
                partial.unlink()
            return False
        if read_json(manifest).get("key") == params_hash(params):
            return True
        if self.overwrite:
            partial.unlink()
            return False
        raise CacheMismatchError(f"{partial} is an interrupted run with other parameters. Use another "
                                 f"--work-dir, or --overwrite to discard it.")
