"""The batched pipeline against the naive reference (vpclib.reference): same per-frame scores.

A tiny dataset in the 'folder' layout (random textures with moving squares, PNG frames), fixed
boxes from a CSV, a random-init efficientnet_lite0: the pipeline (frames decoded once per video,
gathered crops, encoder batches mixed across clips, matmul kNN) and the reference (per-object
frame reads, cv2 crops, per-clip encoder calls, a cdist loop) must give the same per-frame scores
of every stream, to a relative error of 1e-4 in fp32 (float rounding of batched vs per-clip
convolutions and of the two distance computations is ~1e-6).
"""

import csv
import threading

import cv2
import h5py
import numpy as np
import pytest
import torch

from vpclib import engine, pipeline, reference
from vpclib.config import from_dict
from vpclib.encoder import build_encoder
from vpclib.memory import MEMORIES
from vpclib.objects import middle_frame_offset
from vpclib.store import WorkDir

T = 4
WIDTH, HEIGHT = 128, 96
VIDEOS = {"training": {"a": 8, "b": 9}, "testing": {"c": 10, "d": 8}}    # frames; 10 leaves 2 unscored
RTOL = 1e-4
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def write_dataset(root, rng):
    """Frames of every video and a boxes CSV (0 to 3 boxes on each clip's middle frame)."""
    rows = []
    for split, videos in VIDEOS.items():
        for name, n_frames in videos.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            texture = cv2.resize(rng.integers(0, 256, (HEIGHT // 4, WIDTH // 4, 3), dtype=np.uint8), (WIDTH, HEIGHT))
            squares = [(rng.integers(0, WIDTH - 30), rng.integers(0, HEIGHT - 30), rng.integers(10, 30),
                        rng.integers(-2, 3), rng.integers(-2, 3), rng.integers(0, 256, 3)) for _ in range(3)]
            for i in range(n_frames):
                frame = texture.copy()
                for x, y, side, vx, vy, colour in squares:
                    x0, y0 = int(np.clip(x + vx * i, 0, WIDTH - side)), int(np.clip(y + vy * i, 0, HEIGHT - side))
                    frame[y0:y0 + side, x0:x0 + side] = colour
                cv2.imwrite(str(folder / f"{i:03d}.png"), frame)
            if split == "testing":
                (root / "labels").mkdir(exist_ok=True)
                np.save(root / "labels" / f"{name}.npy", (np.arange(n_frames) >= n_frames // 2).astype(np.uint8))
            for b in range(n_frames // T):
                middle = b * T + middle_frame_offset(T)
                for _ in range(rng.integers(0, 4) if b else 2):          # clip 0 always has objects
                    x1, y1 = rng.uniform(-10, WIDTH - 8), rng.uniform(-10, HEIGHT - 8)
                    w, h = rng.uniform(3, 60, 2)                          # small, large, partly outside
                    rows.append((name, middle, x1, y1, x1 + w, y1 + h, 0.9, 0))
    rows.append(("c", middle_frame_offset(T) + T, 200, 200, 230, 230, 0.9, 0))  # outside the frame: no object
    with open(root / "boxes.csv", "w", newline="") as f:
        csv.writer(f).writerows([("video", "frame", "x1", "y1", "x2", "y2", "confidence", "class"), *rows])


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: the batches are tiny, and on a busy 2-core runner OpenMP barriers
    then cost more than the work (seen: 10x slower with 2 threads under load)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    write_dataset(root, np.random.default_rng(0))
    return root


def make_config(root, device, arithmetic="reference"):
    return from_dict({
        "arithmetic": arithmetic,
        "data": {"name": "tiny", "layout": "folder", "root": str(root)},
        "objects": {"detector": "boxes", "boxes_file": str(root / "boxes.csv"), "box_growth": 1.2,
                    "crop_size": 48, "train_confidence": 0.5, "test_confidence": 0.5},
        "encoder": {"backbone": "timm:efficientnet_lite0", "pretrained": "random", "batch_size": 7},
        "method": {"clip_length": T, "channel_groups": 8, "coreset_ratio": 0.5, "power": 2},
        "device": device,
    })


@pytest.mark.parametrize("arithmetic", ["reference", "exact"])
@pytest.mark.parametrize("device", DEVICES)
def test_pipeline_matches_reference(dataset, tmp_path, device, arithmetic, monkeypatch):
    if device == "cuda":                                                  # true fp32 on both paths
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    cfg = make_config(dataset, device, arithmetic)
    work = WorkDir(tmp_path / "work")
    encoder = build_encoder(cfg, device)

    # the pipeline: batched features -> memory -> scores
    videos = {split: pipeline.load_videos(cfg, work, split) for split in pipeline.SPLITS}
    paths = {split: pipeline.extract_features(cfg, work, split, videos[split],
                                              pipeline.detect_objects(cfg, work, split, videos[split]), encoder=encoder)
             for split in pipeline.SPLITS}
    banks = pipeline.build_memories(cfg, work, videos["train"], paths["train"])
    test = pipeline.read_features(work.path("features/test.h5"))
    fast = pipeline.frame_table(cfg, test, {s: b.vectors for s, b in banks.items()})

    # the reference, from the same cached boxes: its own features, memory and loop kNN
    ref = {}
    for split in pipeline.SPLITS:
        videos = pipeline.load_videos(cfg, work, split)
        boxes = pipeline.detect_objects(cfg, work, split, videos)
        ref[split] = reference.extract_features(videos, boxes, encoder, cfg, tmp_path / f"ref-{split}.h5")
    ref_banks = reference.build_memories(ref["train"], cfg, device)
    slow = reference.frame_scores(ref["test"], {s: b.vectors for s, b in ref_banks.items()}, cfg, device)

    for s in MEMORIES:
        np.testing.assert_allclose(ref_banks[s].vectors, banks[s].vectors, rtol=RTOL, atol=1e-5 * np.abs(banks[s].vectors).max())
    n_scored = sum(n // T * T for n in VIDEOS["testing"].values())
    assert len(fast["spatial"]) == n_scored
    assert (fast["spatial"] == 0).any() and (fast["spatial"] > 0).any()    # clips with and without objects
    for s in MEMORIES:
        assert slow[s].shape == fast[s].shape
        np.testing.assert_allclose(fast[s], slow[s], rtol=RTOL, atol=0, err_msg=f"stream {s}")


class MemoryVideo:
    """A video without frame files (decoded sequentially, like a video file), from in-memory frames."""

    def __init__(self, video):
        self.frames = np.stack([cv2.imread(str(p)) for p in video.frame_paths])
        self.name, self.n_frames, self.labels = video.name, video.n_frames, None
        self.frame_size = (self.frames.shape[2], self.frames.shape[1])

    def iter_frames(self, indices=None):
        wanted = range(self.n_frames) if indices is None else sorted({int(i) for i in indices})
        return ((i, self.frames[i]) for i in wanted)


@pytest.mark.parametrize("arithmetic", ["reference", "exact"])
def test_video_features_same_for_any_chunking_and_decoder(dataset, tmp_path, arithmetic):
    """Chunks of 1 or all clips, frame files read by a pool or frames iterated in order: one result."""
    cfg = make_config(dataset, "cpu", arithmetic)
    work = WorkDir(tmp_path / "work")
    encoder = build_encoder(cfg, "cpu")
    video = pipeline.load_videos(cfg, work, "test")[0]
    boxes = pipeline.detect_objects(cfg, work, "test", pipeline.load_videos(cfg, work, "test"))[video.name]
    starts = pipeline.video_clip_starts(cfg, video)
    whole = engine.video_features(video, starts, boxes, encoder, cfg, clips_per_chunk=len(starts))
    for chunk, source in [(1, video), (1, MemoryVideo(video))]:
        part = engine.video_features(source, starts, boxes, encoder, cfg, clips_per_chunk=chunk)
        assert part.keys() == whole.keys()
        for k in whole:
            np.testing.assert_allclose(part[k], whole[k], rtol=1e-5, atol=1e-6, err_msg=k)
    np.testing.assert_array_equal(whole["object_clip"], np.repeat(np.arange(len(boxes)), [len(b) for b in boxes]))


class WatchedVideo:
    """A video whose frame reads set `started` (the decoder thread reached it)."""

    def __init__(self, video):
        self.video, self.started = video, threading.Event()

    def __getattr__(self, name):
        return getattr(self.video, name)

    def decode(self, i):
        self.started.set()
        return self.video.decode(i)


def test_stream_decodes_the_next_video_before_it_is_asked_for(dataset, tmp_path):
    """FrameStream: once the first video's last chunk is handed out, the second video's first chunk
    is decoding (nobody asked for the second video yet); every chunk holds the frames read directly."""
    cfg = make_config(dataset, "cpu")
    first, second = pipeline.load_videos(cfg, WorkDir(tmp_path / "work"), "test")
    watched = WatchedVideo(second)
    items = [(first, pipeline.video_clip_starts(cfg, first)), (watched, pipeline.video_clip_starts(cfg, second))]
    with engine.FrameStream(items, cfg, "cpu", clips_per_chunk=1) as stream:
        got = [list(stream.chunks(first))]
        assert watched.started.wait(timeout=60)
        got.append(list(stream.chunks(watched)))
    for (video, starts), chunks in zip(items, got):
        assert [(lo, n) for lo, n, _ in chunks] == [(b, 1) for b in range(len(starts))]
        for lo, n, frames in chunks:
            direct = np.stack([cv2.imread(str(video.frame_paths[int(starts[lo]) + i])) for i in range(T)])
            np.testing.assert_array_equal(frames.numpy(), direct)


def test_stream_skips_a_video_nobody_asks_for(dataset, tmp_path):
    """chunks(c) right after a's chunks (b never asked for, e.g. a stage that failed on it): c's
    own frames, in order; asking for a video already passed is an error."""
    cfg = make_config(dataset, "cpu")
    work = WorkDir(tmp_path / "work")
    a, b = pipeline.load_videos(cfg, work, "train")
    c = pipeline.load_videos(cfg, work, "test")[0]
    items = [(v, pipeline.video_clip_starts(cfg, v)) for v in (a, b, c)]
    with engine.FrameStream(items, cfg, "cpu", clips_per_chunk=1) as stream:
        list(stream.chunks(a))
        got = list(stream.chunks(c))
        with pytest.raises(ValueError):
            list(stream.chunks(b))
    starts = items[2][1]
    assert [lo for lo, _, _ in got] == list(range(len(starts)))
    for lo, _, frames in got:
        direct = np.stack([cv2.imread(str(c.frame_paths[int(starts[lo]) + i])) for i in range(T)])
        np.testing.assert_array_equal(frames.numpy(), direct)


def test_damaged_frame_of_the_next_video_is_blamed_on_it(tmp_path, rng):
    """The second video's first chunk decodes while the first video is handed out: the decoder's
    message about its damaged frame names the second video's file, not the first video."""
    from vpclib.datasets import Video
    from vpclib.errors import DatasetError
    cfg = make_config(tmp_path, "cpu")
    videos = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        paths = [folder / f"{i:03d}.jpg" for i in range(2 * T)]
        for path in paths:
            cv2.imwrite(str(path), cv2.resize(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8), (WIDTH, HEIGHT)))
        videos.append(Video(name, folder, paths, len(paths)))
    bad = videos[1].frame_paths[1]
    content = bad.read_bytes()
    half = len(content) // 2
    bad.write_bytes(content[:half] + bytes(64) + content[half + 64:])       # coded data overwritten
    items = [(v, pipeline.video_clip_starts(cfg, v)) for v in videos]
    with engine.FrameStream(items, cfg, "cpu", clips_per_chunk=1) as stream:
        assert len(list(stream.chunks(videos[0]))) == 2                       # b's first chunk decoded meanwhile
        with pytest.raises(DatasetError) as err:
            list(stream.chunks(videos[1]))
    assert str(bad) in str(err.value) and str(videos[0].source) + "/" not in str(err.value)


def test_features_file_holds_each_video_alone(dataset, tmp_path, monkeypatch):
    """extract_features (the next video decoded ahead, the h5 written by a background thread) writes
    for each video exactly what engine.video_features gives that video alone; every write runs on
    one thread, not the caller's."""
    cfg = make_config(dataset, "cpu")
    work = WorkDir(tmp_path / "work")
    encoder = build_encoder(cfg, "cpu")
    videos = pipeline.load_videos(cfg, work, "test")
    boxes = pipeline.detect_objects(cfg, work, "test", videos)
    threads, real = [], pipeline._write_video
    monkeypatch.setattr(pipeline, "_write_video", lambda *a: threads.append(threading.current_thread()) or real(*a))
    path = pipeline.extract_features(cfg, work, "test", videos, boxes, encoder=encoder)
    assert len(threads) == len(videos) and len(set(threads)) == 1 and threads[0] is not threading.main_thread()
    with h5py.File(path, "r") as h5:
        assert [str(v) for v in h5.attrs["videos"]] == [v.name for v in videos]
        for video in videos:
            starts = pipeline.video_clip_starts(cfg, video)
            alone = engine.video_features(video, starts, boxes[video.name], encoder, cfg)
            group = h5[video.name]
            assert set(group) == set(alone) | {"clip_start", "labels"}
            for k, value in alone.items():
                np.testing.assert_array_equal(group[k][()], value, err_msg=k)
            np.testing.assert_array_equal(group["clip_start"][()], starts)
            np.testing.assert_array_equal(group["labels"][()], video.labels)
            assert group.attrs["complete"] and group.attrs["n_frames"] == video.n_frames


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_clip_features_never_waits_for_the_gpu(dataset, tmp_path):
    """No host sync inside clip_features on CUDA with device-side crops (the exact arithmetic): the
    decoder thread and the GPU then overlap. (The reference arithmetic crops with OpenCV on the host.)"""
    cfg = make_config(dataset, "cuda", "exact")
    work = WorkDir(tmp_path / "work")
    encoder = build_encoder(cfg, "cuda")
    video = pipeline.load_videos(cfg, work, "test")[0]
    boxes = pipeline.detect_objects(cfg, work, "test", pipeline.load_videos(cfg, work, "test"))[video.name]
    n = len(pipeline.video_clip_starts(cfg, video))
    frames = torch.from_numpy(np.stack([f for _, f in video.iter_frames(range(n * T))])).cuda()
    engine.clip_features(frames, boxes[:n], encoder, cfg)                 # warm-up (cuDNN, pinned pool)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        engine.clip_features(frames, boxes[:n], encoder, cfg)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graphed_coreset_equals_eager(monkeypatch):
    from vpclib import coreset
    x = torch.randn(5000, 48, device="cuda")
    graphed = coreset.greedy_coreset(x, 333, chunk=1024)
    monkeypatch.setattr(coreset, "GRAPH_STEPS", 10 ** 9)                     # the plain loop
    assert graphed.tolist() == coreset.greedy_coreset(x, 333, chunk=1024).tolist()
    assert graphed.tolist() == coreset.greedy_coreset(x.cpu(), 333, chunk=1024).tolist()


def test_nearest_distances_in_bank_blocks(rng):
    """Blocks over the bank (a large memory) give the nearest distance of one block over all."""
    from vpclib.scores import nearest_distances
    queries = torch.as_tensor(rng.normal(size=(100, 6)), dtype=torch.float32)
    bank = torch.as_tensor(rng.normal(size=(400, 6)), dtype=torch.float32)
    bank[250] = queries[3]                                                   # an exact match in a later block
    expected = torch.cdist(queries.double(), bank.double()).min(1).values.float()
    for memory_chunk in (1 << 16, 333, 64, 7):
        ours = nearest_distances(queries, bank, chunk=50, memory_chunk=memory_chunk)
        np.testing.assert_allclose(ours.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
        assert ours[3] == 0
