"""Stages 2-6 sharded over 2 processes (torchrun, gloo on the CPU): the artifacts of one process.

The embedded synthetic default, made smaller (3 training and 3 test videos of 40 frames). Each
rank logs the videos it encodes and scores, so the test also sees that the work was shared.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from vpclib.cli import main as vpc
from vpclib.distributed import share
from vpclib.memory import Memory, build_memory, merge_memories

ROOT = Path(__file__).resolve().parents[1]
SETS = ["data.synthetic.n_train=3", "data.synthetic.n_test=3", "data.synthetic.n_frames=40"]
ARGV = ["run", str(ROOT / "params" / "synthetic.yaml"), "--device", "cpu", *[a for s in SETS for a in ("--set", s)]]

LAUNCH = textwrap.dedent("""
    import json, os, sys
    from vpclib import cli, pipeline
    log = open(os.environ["VPC_TEST_LOG"] + ".rank" + os.environ["RANK"], "a")
    def logged(name, label):
        real = getattr(pipeline, name)
        def call(*a, **k):
            print(json.dumps([name, label(a)]), file=log, flush=True)
            return real(*a, **k)
        setattr(pipeline, name, call)
    logged("video_features", lambda a: a[0].name)
    logged("video_frame_scores", lambda a: a[1])
    logged("leave_one_out_video", lambda a: a[1])
    sys.exit(cli.main(sys.argv[1:]))
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_and_two_processes(tmp, argv):
    """argv run in one process (one thread) into tmp/one and by torchrun's 2 gloo processes into
    tmp/two -> (one, two, {rank: the calls it logged})."""
    one, two = tmp / "one", tmp / "two"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                              # as each rank (torchrun: OMP_NUM_THREADS=1): CPU
    try:                                                  # convolutions round by the thread count
        assert vpc(argv + ["--work-dir", str(one)]) == 0
    finally:
        torch.set_num_threads(threads)
    (tmp / "launch.py").write_text(LAUNCH)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "VPC_PROGRESS": "0", "OMP_NUM_THREADS": "1", "VPC_TEST_LOG": str(tmp / "log")}
    env.pop("WORLD_SIZE", None)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
                           "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
                           str(tmp / "launch.py"), *argv, "--work-dir", str(two)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    logs = {k: [json.loads(line) for line in (tmp / f"log.rank{k}").read_text().splitlines()] for k in (0, 1)}
    return one, two, logs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return one_and_two_processes(tmp_path_factory.mktemp("distributed"), ARGV)


@pytest.fixture(scope="module")
def velocity_runs(tmp_path_factory):
    """The same with the velocity memory on (stage 1b on rank 0, its stream fused on rank 0) and a
    count-conditioned calibration (the ranks' leave-one-out object counts joined on rank 0)."""
    return one_and_two_processes(tmp_path_factory.mktemp("distributed-velocity"),
                                 ARGV + ["--set", "velocity.enabled=true", "--set", "fusion.count_bins=2"])


def test_scores_and_metrics_equal_one_process(runs):
    one, two, _ = runs
    assert (two / "scores.csv").read_text() == (one / "scores.csv").read_text()
    assert json.loads((two / "metrics.json").read_text()) == json.loads((one / "metrics.json").read_text())
    assert json.loads((two / "config.json").read_text()) == json.loads((one / "config.json").read_text())


def test_velocity_scores_and_metrics_equal_one_process(velocity_runs):
    one, two, _ = velocity_runs
    text = (one / "scores.csv").read_text()
    assert text.splitlines()[0].split(",")[7:9] == ["velocity", "objects"]  # the fourth stream and the counts
    assert {k for k, v in json.loads((one / "metrics.json").read_text())["labelfree"]["stats"].items()
            if isinstance(v, dict) and len(v["mean"]) == len(v["edges"]) + 1} == {"spatial", "temporal", "highlevel",
                                                                                 "velocity"}
    assert (two / "scores.csv").read_text() == text
    metrics = json.loads((one / "metrics.json").read_text())
    assert metrics["labelfree"]["stats"]["velocity"] is not None            # calibrated with its memory
    assert json.loads((two / "metrics.json").read_text()) == metrics


def test_memory_and_features_equal_one_process(runs):
    one, two, _ = runs
    with np.load(one / "memory.npz", allow_pickle=False) as a, np.load(two / "memory.npz", allow_pickle=False) as b:
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
            assert np.array_equal(a[k], b[k]), k
    for split in ("train", "test"):
        with h5py.File(one / "features" / f"{split}.h5", "r") as a, h5py.File(two / "features" / f"{split}.h5", "r") as b:
            assert list(b.attrs["videos"]) == list(a.attrs["videos"])
            for video in a.attrs["videos"]:
                assert set(b[video]) == set(a[video]) and dict(b[video].attrs) == dict(a[video].attrs)
                for k in a[video]:
                    assert np.array_equal(a[video][k][()], b[video][k][()]), (split, video, k)
    assert not (two / "shards").exists()                                  # merged, then removed


def test_each_rank_did_its_share(runs):
    """3 videos of 40 frames per split: rank 0 gets videos 1 and 3 (0 and 2), rank 1 video 2 (1)."""
    _, _, logs = runs
    encoded = {k: [x for name, x in logs[k] if name == "video_features"] for k in (0, 1)}
    assert encoded == {0: ["01", "03", "01", "03"], 1: ["02", "02"]}      # train, then test
    for name in ("video_frame_scores", "leave_one_out_video"):
        assert {k: [x for n, x in logs[k] if n == name] for k in (0, 1)} == {0: [0, 2], 1: [1]}


class Sized:
    def __init__(self, n_frames):
        self.n_frames = n_frames


def test_share_balances_frames_longest_first():
    videos = [Sized(n) for n in (10, 50, 20, 30, 40)]
    # 50 -> rank 0; 40 -> 1; 30 -> 2; 20 -> 2 (30 frames, the fewest); 10 -> 1 (40 against 50)
    assert [[v.n_frames for v in part] for part in share(videos, 3)] == [[50], [10, 40], [20, 30]]
    assert share(videos, 1) == [videos]
    assert share(videos[:1], 2) == [videos[:1], []]


def test_merged_coresets_are_the_memory_of_all_videos(rng):
    per_video = [rng.normal(size=(n, 5)).astype(np.float32) for n in (12, 0, 7, 9)]
    whole = build_memory(per_video, 0.3)
    empty = np.zeros((0, 0), np.float32)
    parts = [build_memory([x if v in keep else empty for v, x in enumerate(per_video)], 0.3)
             for keep in ({2}, {0, 3})]
    merged = merge_memories(parts)
    for k in ("vectors", "video", "row"):
        assert np.array_equal(getattr(merged, k), getattr(whole, k)), k
    assert isinstance(merged, Memory) and list(np.unique(merged.video)) == [0, 2, 3]
