"""Distributed: stages 2-6 sharded over the processes of `torchrun --nproc-per-node N` (one a GPU),
giving the artifacts one process writes.

    Ranks.from_env()                                         this process: rank, world size, local rank
    share(videos, n)                                         each rank's videos, balanced by frame count
    extract_features(cfg, work, split, videos, boxes, encoder, ranks)      stage 2, one shard a rank
    build_memories(cfg, work, train_videos, train_path, ranks)            stage 3, per-video coresets
    evaluate(cfg, work, videos, memories, train_path, test_path, ranks)   stages 4-6, scoring sharded

`pipeline.run` calls these instead of its own stages 2-6 when torchrun started it (WORLD_SIZE > 1);
stages 0 and 1 run on rank 0 first, the other ranks then read its files. Each rank extracts the
features of its share of the videos into its own shard, shards/rank<k>-of-<N>/features/<split>.h5
(its own cache key, manifest and resume); rank 0 copies the shards into the features/<split>.h5
one process writes (the split's video order, the same arrays) and removes them. Each rank builds
the coresets of its training videos; a video's coreset depends on that video alone, so rank 0's
concatenation in video order is exactly the memory one process builds. Each rank scores its test
videos and its training videos' leave-one-out scores; rank 0 gathers the rows, fuses, measures,
and writes scores.csv and metrics.json. Rank 0 alone writes shared artifacts; the others wait at a
barrier, then read them. Backend: nccl on CUDA (rank k on cuda:LOCAL_RANK), gloo on the CPU.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from datetime import timedelta

import h5py
import numpy as np
import torch
import torch.distributed as dist

from . import keys
from .config import Config
from .encoder import resolve_device
from .errors import ConfigError
from .memory import MEMORIES, Memory, build_memory, load_memory, merge_memories, save_memory
from .store import WorkDir, atomic_path, read_json

TIMEOUT = timedelta(hours=6)        # a barrier waits this long (rank 0 alone runs stage 1 meanwhile)


@dataclass(frozen=True)
class Ranks:
    """This process among torchrun's: rank k of `world`, on GPU `local` of its host. One process
    (no torchrun): rank 0 of 1, and every method below does nothing."""
    rank: int = 0
    world: int = 1
    local: int = 0

    @classmethod
    def from_env(cls) -> "Ranks":
        """From torchrun's RANK, WORLD_SIZE and LOCAL_RANK; rank 0 of 1 without them."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        return cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def start(self, device: str) -> "Ranks":
        """Join the process group (once): nccl with this rank's GPU, cuda:LOCAL_RANK, as the current
        device ('cuda' then means it), gloo on the CPU."""
        if self.world == 1 or dist.is_initialized():
            return self
        cuda = resolve_device(device).startswith("cuda")
        if cuda:
            if ":" in device:
                raise ConfigError(f"device {device!r}: under torchrun each rank uses cuda:LOCAL_RANK; "
                                  f"set device to 'auto' or 'cuda'")
            torch.cuda.set_device(self.local)
        dist.init_process_group("nccl" if cuda else "gloo", rank=self.rank, world_size=self.world, timeout=TIMEOUT)
        return self

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier(**({"device_ids": [self.local]} if dist.get_backend() == "nccl" else {}))

    def gather(self, obj) -> list | None:
        """[obj of rank 0, obj of rank 1, ...] on rank 0 (None on the others); objects made by this
        program (arrays and dicts), never a user's file."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world if self.main else None
        dist.gather_object(obj, out, dst=0)
        return out

    @contextlib.contextmanager
    def rank0_first(self):
        """The block runs on rank 0, then on the other ranks (which find rank 0's files made)."""
        if not self.main:
            self.barrier()
        yield
        if self.main:
            self.barrier()

    def mine(self, videos: list) -> list:
        """This rank's share of `videos` (share)."""
        return share(videos, self.world)[self.rank]


def share(videos: list, n: int) -> list[list]:
    """The videos of each of n ranks: the longest first, each to the rank with the fewest frames so
    far (ties: the lower rank); each rank's videos in the split's order. Every rank computes the
    same shares."""
    load, owner = [0] * n, {}
    for i in sorted(range(len(videos)), key=lambda i: (-videos[i].n_frames, i)):
        k = min(range(n), key=lambda k: (load[k], k))
        owner[i], load[k] = k, load[k] + videos[i].n_frames
    return [[v for i, v in enumerate(videos) if owner[i] == k] for k in range(n)]


def shard(work: WorkDir, rank: int, world: int) -> WorkDir:
    """The work directory of one rank's shards: WORK/shards/rank<k>-of-<N>."""
    return WorkDir(work.path(f"shards/rank{rank}-of-{world}"), overwrite=work.overwrite)


# ---------------------------------------------------------------------------------------------
# 2. features

def extract_features(cfg: Config, work: WorkDir, split: str, videos: list, boxes: dict, encoder, ranks: Ranks):
    """Stage 2 sharded: each rank's share into its shard (pipeline.extract_features), then rank 0
    merges the shards into features/<split>.h5. Returns its path."""
    from . import pipeline
    name, key = f"features/{split}.h5", keys.features_key(cfg, split, videos)
    if work.ready(name, key):                                # decided by every rank before rank 0 writes it
        ranks.barrier()
        return work.path(name)
    mine = ranks.mine(videos)
    if mine:
        pipeline.extract_features(cfg, shard(work, ranks.rank, ranks.world), split, mine, boxes, encoder=encoder)
    ranks.barrier()
    if ranks.main:
        merge_features(work, split, videos, key, ranks.world)
    ranks.barrier()
    return work.path(name)


def merge_features(work: WorkDir, split: str, videos: list, key: dict, world: int) -> None:
    """features/<split>.h5 from the shards of `world` ranks: each video's group copied (arrays and
    attributes) in the split's order, the shards then removed."""
    name, shares = f"features/{split}.h5", share(videos, world)
    files = {k: h5py.File(shard(work, k, world).path(name), "r") for k in range(world) if shares[k]}
    try:
        with atomic_path(work.path(name)) as tmp:
            with h5py.File(tmp, "w") as out:
                owner = {v.name: k for k, part in enumerate(shares) for v in part}
                for video in videos:
                    files[owner[video.name]].copy(video.name, out)
                out.attrs["videos"] = [v.name for v in videos]
    finally:
        for f in files.values():
            f.close()
    work.commit(name, key)
    for k in files:
        path = shard(work, k, world).path(name)
        path.unlink()
        WorkDir.manifest(path).unlink(missing_ok=True)
    if not any(p.is_file() for p in work.path("shards").rglob("*")):
        shutil.rmtree(work.path("shards"), ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# 3. memories

def build_memories(cfg: Config, work: WorkDir, train_videos: list, train_path, ranks: Ranks) -> dict[str, Memory]:
    """Stage 3 sharded: each rank the coresets of its training videos (video indices of the whole
    split), rank 0 their concatenation in video order (memory.merge_memories) into memory.npz."""
    from . import pipeline
    name, key = "memory.npz", keys.memory_key(cfg, train_videos)
    if work.ready(name, key):
        ranks.barrier()
        return load_memory(work.path(name))
    index = {v.name: i for i, v in enumerate(train_videos)}
    feats = pipeline.read_features(train_path, {v.name for v in ranks.mine(train_videos)})
    candidates = {index[n]: pipeline.memory_vectors(f) for n, f in feats.items()}
    m, device, part = cfg.method, resolve_device(cfg.device), {}
    for s in MEMORIES:
        per_video = [np.zeros((0, 0), np.float32)] * len(train_videos)      # others' videos: none here
        for v, vectors in candidates.items():
            per_video[v] = vectors[s]
        part[s] = (build_memory(per_video, m.coreset_ratio, device, m.coreset_projection, m.coreset_projection_eps)
                   if any(len(x) for x in per_video) else None)
    parts = ranks.gather(part)
    if ranks.main:
        memories = {}
        for s in MEMORIES:
            built = [p[s] for p in parts if p[s] is not None]
            if not built:
                raise ValueError("no vectors to build a memory from")
            memories[s] = merge_memories(built)
        with atomic_path(work.path(name)) as tmp:
            save_memory(tmp, memories)
        work.commit(name, key)
    ranks.barrier()
    return load_memory(work.path(name))


# ---------------------------------------------------------------------------------------------
# 4-6. scores, fusion, metrics

def evaluate(cfg: Config, work: WorkDir, videos: dict, memories: dict[str, Memory], train_path, test_path,
             velocity_paths: dict | None = None, *, ranks: Ranks) -> dict:
    """Stages 4-6 with the scoring sharded: each rank scores its test videos (video_frame_scores)
    and its training videos left out (leave_one_out_video); rank 0 joins them in the splits' order,
    adds the velocity stream when enabled (pipeline.velocity_column: small, not sharded), fuses,
    measures and writes scores.csv and metrics.json, as pipeline.evaluate does."""
    from . import pipeline
    key = keys.metrics_key(cfg, videos["train"], videos["test"])
    if work.ready("metrics.json", key) and work.ready("scores.csv", key):
        ranks.barrier()
        return read_json(work.path("metrics.json"))
    order = {s: {v.name: i for i, v in enumerate(videos[s])} for s in ("train", "test")}
    vectors = {s: b.vectors for s, b in memories.items()}
    test = pipeline.read_features(test_path, {v.name for v in ranks.mine(videos["test"])})
    rows = {n: pipeline.video_frame_scores(cfg, order["test"][n], f, vectors) for n, f in test.items()}
    objects = {n: f["object_clip"] for n, f in test.items()}
    calibrated = cfg.fusion.labelfree == "calibrated" and len(videos["train"]) >= 2
    loo = {}
    if calibrated:
        train = pipeline.read_features(train_path, {v.name for v in ranks.mine(videos["train"])})
        loo = {n: pipeline.leave_one_out_video(cfg, order["train"][n], f, memories) for n, f in train.items()}
    parts = ranks.gather((rows, objects, loo))
    if ranks.main:
        rows, objects, loo = ({k: x for p in parts for k, x in p[j].items()} for j in range(3))
        names = [v.name for v in videos["test"]]
        table = pipeline.concatenate_rows([rows[n] for n in names])
        stream = pipeline.velocity_column(cfg, table, names, pipeline.stage_velocity_paths(cfg, work, videos,
                                                                                            velocity_paths))
        if stream is not None:
            memories = {**memories, "velocity": stream.memory}
        joined = pipeline.join_leave_one_out([loo[v.name] for v in videos["train"]]) if calibrated else None
        stats = pipeline.calibration_from_scores(cfg, joined, stream)      # None without leave-one-out scores
        fused = pipeline.fuse(cfg, table, None, memories, velocity_stream=stream, stats=stats)
        result = pipeline.measure(cfg, table, fused, memories, {n: {"object_clip": objects[n]} for n in names})
        pipeline.write_results(work, key, names, table, fused, result)
    ranks.barrier()
    return read_json(work.path("metrics.json"))
