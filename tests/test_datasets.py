"""Videos, clips and ground truth: real label files, every layout, every error."""

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io

from vpclib.datasets import (Video, clip_starts, intervals_to_mask, load_avenue_pixel_masks,
                             load_interval_mat, load_npy_mask, load_split, load_ucsd_m,
                             natural_sort, read_image, scored_length)
from vpclib.errors import DatasetError

SHARED_DATA = Path(os.environ.get("VPC_SHARED_DATA",
                                  Path(__file__).resolve().parents[2] / "shared" / "data"))
needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} not present")


# -----------------------------------------------------------------------------
# helpers: tiny datasets written into tmp_path

def frame_image(video: int, t: int, size=(32, 24)) -> np.ndarray:
    """A (H, W, 3) frame whose content encodes (video, t), smooth enough for JPEG/MJPG."""
    w, h = size
    image = np.zeros((h, w, 3), np.uint8)
    image[:, :, 0] = 20 + 10 * t
    image[:, :, 1] = 40 + 30 * video
    image[:, : w // 2, 2] = 200
    return image


def write_frames(folder: Path, n: int, video: int = 0, ext: str = ".png", names=None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for t in range(n):
        name = names[t] if names else f"{t:03d}{ext}"
        cv2.imwrite(str(folder / name), frame_image(video, t))


def save_gt(path: Path, entries) -> None:
    """Interval labels as MATLAB writes them: a (1, V) cell of 2 x K arrays."""
    gt = np.empty((1, len(entries)), dtype=object)
    for i, entry in enumerate(entries):
        gt[0, i] = np.asarray(entry, dtype=np.int32)
    scipy.io.savemat(str(path), {"gt": gt})


def ucsd_dataset(root: Path, test_lengths=(12, 10), train_lengths=(8,)) -> Path:
    for i, n in enumerate(train_lengths):
        write_frames(root / "training" / "frames" / f"{i + 1:02d}", n, i)
    for i, n in enumerate(test_lengths):
        write_frames(root / "testing" / "frames" / f"{i + 1:02d}", n, i)
    return root


# -----------------------------------------------------------------------------
# natural sort, clips

def test_natural_sort_compares_numbers_numerically():
    assert natural_sort(["10.jpg", "2.jpg", "1.jpg"]) == ["1.jpg", "2.jpg", "10.jpg"]
    paths = [Path("v/frame_10.png"), Path("v/frame_9.png"), Path("v/frame_100.png")]
    assert [p.name for p in natural_sort(paths)] == ["frame_9.png", "frame_10.png", "frame_100.png"]
    assert natural_sort(["01_0015", "01_0014", "02_0001"]) == ["01_0014", "01_0015", "02_0001"]


@pytest.mark.parametrize("n, T, skip, starts, scored", [
    (23, 4, False, [0, 4, 8, 12, 16], 20),
    (23, 4, True, [1, 5, 9, 13, 17], 20),
    (21, 4, True, [1, 5, 9, 13, 17], 20),   # last clip 17..20 is the last frame, 20 = n-1
    (20, 4, True, [1, 5, 9, 13], 16),       # 17..20 would need frame 20, absent
    (20, 4, False, [0, 4, 8, 12, 16], 20),
    (3, 4, False, [], 0),
    (10, 1, False, list(range(10)), 10),
])
def test_clip_starts_by_hand(n, T, skip, starts, scored):
    assert clip_starts(n, T, skip).tolist() == starts
    assert scored_length(n, T, skip) == scored


def test_clip_starts_match_brute_force():
    for n in range(0, 40):
        for T in (1, 2, 3, 4, 10):
            for skip in (False, True):
                first = 1 if skip else 0
                expected = [s for s in range(first, n, T) if s + T - 1 <= n - 1]
                assert clip_starts(n, T, skip).tolist() == expected, (n, T, skip)


def test_clip_length_must_be_positive():
    with pytest.raises(DatasetError, match="clip_length"):
        clip_starts(10, 0)


# -----------------------------------------------------------------------------
# ground-truth readers on hand-made files

def test_intervals_to_mask_two_by_k_and_one_d():
    mask = intervals_to_mask(np.array([[2, 7], [3, 8]]), 10)  # frames 2-3 and 7-8, 1-based
    assert mask.dtype == np.uint8
    assert mask.tolist() == [0, 1, 1, 0, 0, 0, 1, 1, 0, 0]
    assert intervals_to_mask(np.array([4, 5]), 6).tolist() == [0, 0, 0, 1, 1, 0]
    assert intervals_to_mask(np.zeros((2, 0)), 3).tolist() == [0, 0, 0]
    with pytest.raises(DatasetError, match=r"\[9, 11\].*1\.\.10"):
        intervals_to_mask(np.array([9, 11]), 10)


def test_load_interval_mat_one_d_entries_and_names(tmp_path):
    path = tmp_path / "gt.mat"
    save_gt(path, [[[1, 5], [2, 6]], [3, 4]])               # second entry saved 1-D: (1, 2)
    masks = load_interval_mat(path, [6, 5])
    assert masks[0].tolist() == [1, 1, 0, 0, 1, 1]
    assert masks[1].tolist() == [0, 0, 1, 1, 0]
    with pytest.raises(DatasetError, match=r"gt\.mat has 2 label entries but there are 3 test videos"):
        load_interval_mat(path, [6, 5, 5])
    with pytest.raises(DatasetError, match=r"entry 2 \(video 'b'\).*\[3, 4\].*1\.\.3"):
        load_interval_mat(path, [6, 3], names=["a", "b"])


def test_load_ucsd_m_text(tmp_path):
    path = tmp_path / "UCSDped2.m"
    path.write_text(
        "TestVideoFile = {};\n"
        "% ----------------------------------------------------------\n"
        "TestVideoFile{end+1}.gt_frame = [61:180];\n"
        "% a comment: TestVideoFile{end+1}.gt_frame = [1:2];\n"
        "TestVideoFile{end+1}.gt_frame = [1:5, 10:20];\n"
        "TestVideoFile{end+1}.gt_frame = [7];\n")
    masks = load_ucsd_m(path, [180, 25, 9])
    assert [int(m.sum()) for m in masks] == [120, 5 + 11, 1]
    assert masks[0][59] == 0 and masks[0][60] == 1 and masks[0][179] == 1
    assert np.flatnonzero(masks[1]).tolist() == [0, 1, 2, 3, 4] + list(range(9, 20))
    assert np.flatnonzero(masks[2]).tolist() == [6]
    with pytest.raises(DatasetError, match="UCSDped2.m has 3 label entries but there are 2"):
        load_ucsd_m(path, [180, 25])
    with pytest.raises(DatasetError, match=r"UCSDped2\.m: entry 1.*\[61, 180\].*1\.\.100"):
        load_ucsd_m(path, [100, 25, 9])


def test_load_avenue_pixel_masks(tmp_path):
    folder = tmp_path / "testing_label_mask"
    folder.mkdir()
    expected = [[0, 1, 1, 0], [1, 0, 0]]
    for i, frames in enumerate(expected, start=1):
        cell = np.empty((1, len(frames)), dtype=object)
        for t, anomalous in enumerate(frames):
            mask = np.zeros((6, 8), np.uint8)
            mask[2, 3] = anomalous                      # one pixel makes the frame anomalous
            cell[0, t] = mask
        scipy.io.savemat(str(folder / f"{i}_label.mat"), {"volLabel": cell})
    masks = load_avenue_pixel_masks(folder, [4, 3])
    assert [m.tolist() for m in masks] == expected
    with pytest.raises(DatasetError, match=r"2_label\.mat has masks for 3 frames but test video 2 has 5"):
        load_avenue_pixel_masks(folder, [4, 5])
    with pytest.raises(DatasetError, match="2 label entries but there are 1"):
        load_avenue_pixel_masks(folder, [4])


def test_load_npy_mask_checks(tmp_path):
    good = tmp_path / "v.npy"
    np.save(good, np.array([0, 1, 1, 0], np.int64))
    assert load_npy_mask(good).tolist() == [0, 1, 1, 0]
    assert load_npy_mask(good).dtype == np.uint8
    with pytest.raises(DatasetError, match=r"v\.npy has 4 frames, expected 5"):
        load_npy_mask(good, 5)
    bad_values = tmp_path / "scores.npy"
    np.save(bad_values, np.array([0.2, 0.9]))
    with pytest.raises(DatasetError, match=r"scores\.npy should hold only 0/1"):
        load_npy_mask(bad_values)
    pickled = tmp_path / "pickled.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError, match=r"pickled\.npy"):
        load_npy_mask(pickled)                           # never unpickled
    with pytest.raises(DatasetError, match=r"missing\.npy"):
        load_npy_mask(tmp_path / "missing.npy")


# -----------------------------------------------------------------------------
# the real label files and ped2-mini (read-only)

@needs_shared
def test_ped2_mini_counts():
    root = SHARED_DATA / "ped2-mini"
    test = load_split("ucsd", root, "test", min_frames=4)
    assert [v.name for v in test] == ["01", "02"]
    assert sum(v.n_frames for v in test) == 360
    assert sum(int(v.labels.sum()) for v in test) == 206
    for video, (first, last) in zip(test, [(61, 180), (95, 180)]):   # 1-based inclusive
        expected = np.zeros(180, np.uint8)
        expected[first - 1:last] = 1
        assert np.array_equal(video.labels, expected)
    train = load_split("ucsd", root, "train")
    assert [v.n_frames for v in train] == [120, 120]
    assert all(v.labels is None for v in train)
    assert train[0].frame_paths[:3] == [train[0].source / f"{i:03d}.jpg" for i in range(3)]
    assert train[0].frame_size == (360, 240)
    assert train[0].read_frame(5).shape == (240, 360, 3)


@needs_shared
def test_avenue_real_intervals():
    folder = SHARED_DATA / "labels" / "avenue"
    lengths = json.loads((folder / "test_lengths.json").read_text())["test_video_lengths"]
    masks = load_interval_mat(folder / "avenue.mat", lengths)
    assert len(masks) == 21
    assert sum(len(m) for m in masks) == 15_324
    assert sum(int(m.sum()) for m in masks) == 3_712
    assert masks[7].tolist() == [1] * 36           # video 08: [1; 36], a 1-D entry in MATLAB terms


@needs_shared
def test_shanghaitech_real_masks():
    files = natural_sort((SHARED_DATA / "labels" / "shanghaitech" / "testframemask").glob("*.npy"))
    masks = [load_npy_mask(p) for p in files]
    assert len(masks) == 107
    assert sum(len(m) for m in masks) == 40_791
    assert sum(int(m.sum()) for m in masks) == 17_326


# -----------------------------------------------------------------------------
# every layout on tiny hand-made datasets

def test_ucsd_layout_with_mat_and_with_m_text(tmp_path):
    root = ucsd_dataset(tmp_path / "ped2", test_lengths=(12, 10))
    save_gt(root / "ped2.mat", [[[3], [5]], [[1], [10]]])
    test = load_split("ucsd", root, "test")
    assert [v.labels.tolist() for v in test] == [[0, 0, 1, 1, 1] + [0] * 7, [1] * 10]
    (root / "ped2.mat").unlink()
    (root / "UCSDped2.m").write_text("TestVideoFile{end+1}.gt_frame = [2:3];\n"
                                     "TestVideoFile{end+1}.gt_frame = [9:10];\n")
    test = load_split("ucsd", root, "test")
    assert [np.flatnonzero(v.labels).tolist() for v in test] == [[1, 2], [8, 9]]


def test_ucsd_layout_refuses_ambiguous_mat_files(tmp_path):
    root = ucsd_dataset(tmp_path / "ped", test_lengths=(12, 10))
    save_gt(root / "ped1.mat", [[3, 5], [1, 10]])
    save_gt(root / "ped2.mat", [[3, 5], [1, 10]])
    with pytest.raises(DatasetError, match="several label files.*ped1.mat, ped2.mat.*label_file"):
        load_split("ucsd", root, "test")
    test = load_split("ucsd", root, "test", label_file=root / "ped2.mat")
    assert int(test[0].labels.sum()) == 3


def test_avenue_layout_mat_and_pixel_masks(tmp_path):
    root = tmp_path / "avenue"
    for i, n in enumerate((9, 7)):
        write_frames(root / "testing" / "frames" / f"{i + 1:02d}", n, i, ext=".jpg",
                     names=[f"{t:04d}.jpg" for t in range(n)])
    save_gt(root / "avenue.mat", [[[1, 8], [2, 9]], [4, 4]])
    test = load_split("avenue", root, "test")
    assert [v.labels.tolist() for v in test] == [[1, 1, 0, 0, 0, 0, 0, 1, 1], [0, 0, 0, 1, 0, 0, 0]]
    assert test[0].frame_paths[0].name == "0000.jpg"
    # without avenue.mat, the official pixel masks are used
    (root / "avenue.mat").unlink()
    masks_dir = root / "testing_label_mask"
    masks_dir.mkdir()
    for i, n in enumerate((9, 7), start=1):
        cell = np.empty((1, n), dtype=object)
        for t in range(n):
            cell[0, t] = np.full((4, 4), int(t == i), np.uint8)
        scipy.io.savemat(str(masks_dir / f"{i}_label.mat"), {"volLabel": cell})
    test = load_split("avenue", root, "test")
    assert [np.flatnonzero(v.labels).tolist() for v in test] == [[1], [2]]


def test_shanghaitech_layout(tmp_path):
    root = tmp_path / "shanghai"
    names = ["01_0014", "01_0015", "02_0001"]
    (root / "testframemask").mkdir(parents=True)
    for i, name in enumerate(names):
        write_frames(root / "testing" / name, 11, i, ext=".jpg",
                     names=[f"{t}.jpg" for t in range(11)])      # 0.jpg, 1.jpg, ..., 10.jpg
        np.save(root / "testframemask" / f"{name}.npy", np.eye(11, dtype=np.uint8)[i])
    test = load_split("shanghaitech", root, "test")
    assert [v.name for v in test] == names
    assert [p.name for p in test[0].frame_paths][:3] == ["0.jpg", "1.jpg", "2.jpg"]
    assert test[0].frame_paths[-1].name == "10.jpg"
    assert [int(np.flatnonzero(v.labels)[0]) for v in test] == [0, 1, 2]
    # frame order is the natural order: frame 10 is the last one read
    assert np.array_equal(test[0].read_frame(10), cv2.imread(str(root / "testing" / "01_0014" / "10.jpg")))


def test_iitb_layout_and_skip_first_frame(tmp_path):
    root = tmp_path / "iitb"
    write_frames(root / "testing" / "000209", 9, 0)
    (root / "groundtruth" / "000209").mkdir(parents=True)
    np.save(root / "groundtruth" / "000209" / "000209.npy", np.array([0, 0, 0, 1, 1, 1, 0, 0, 0]))
    test = load_split("iitb", root, "test", skip_first_frame=True, min_frames=8)
    assert test[0].labels.tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 0]
    with pytest.raises(DatasetError, match=r"'000209'.*9 frames.*clip length T=9 plus the skipped first"):
        load_split("iitb", root, "test", skip_first_frame=True, min_frames=9)


def test_folder_layout_npy_and_interval_label_file(tmp_path):
    root = tmp_path / "mine"
    write_frames(root / "training" / "cam_a", 6, 0, ext=".bmp")
    write_frames(root / "testing" / "cam_b", 6, 1, ext=".tif")
    (root / "labels").mkdir()
    np.save(root / "labels" / "cam_b.npy", np.array([0, 1, 0, 1, 0, 1], np.uint8))
    assert load_split("folder", root, "test")[0].labels.tolist() == [0, 1, 0, 1, 0, 1]
    assert load_split("folder", root, "test", label_file="")[0].labels.tolist() == [0, 1, 0, 1, 0, 1]
    save_gt(tmp_path / "intervals.mat", [[2, 3]])
    test = load_split("folder", root, "test", label_file=tmp_path / "intervals.mat")
    assert test[0].labels.tolist() == [0, 1, 1, 0, 0, 0]
    train = load_split("folder", root, "train")
    assert train[0].n_frames == 6 and train[0].labels is None


def test_video_layout_decodes_avi_directly(tmp_path):
    root = tmp_path / "clips"
    (root / "testing").mkdir(parents=True)
    path = root / "testing" / "walk.avi"
    size, n = (64, 48), 15
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, size)
    assert writer.isOpened()
    written = [frame_image(0, t, size) for t in range(n)]
    for frame in written:
        writer.write(frame)
    writer.release()
    (root / "labels").mkdir()
    np.save(root / "labels" / "walk.npy", np.r_[np.zeros(5), np.ones(10)].astype(np.uint8))

    (video,) = load_split("video", root, "test", min_frames=4)
    assert (video.name, video.n_frames, video.frame_paths) == ("walk", n, None)
    assert int(video.labels.sum()) == 10
    assert video.frame_size == size
    decoded = dict(video.iter_frames())
    assert sorted(decoded) == list(range(n))
    for t, frame in decoded.items():                    # MJPG is lossy: compare with a tolerance
        assert np.abs(frame.astype(int) - written[t]).mean() < 4, t
        # and the frame is the right one, not a neighbour (content changes by 10 per frame)
        assert np.abs(frame[..., 0].astype(int) - written[t][..., 0]).mean() < 5
    subset = dict(video.iter_frames([11, 3, 3, 7]))
    assert list(subset) == [3, 7, 11]
    for t in subset:
        assert np.array_equal(subset[t], video.read_frame(t))
        assert np.array_equal(subset[t], decoded[t])
    with pytest.raises(DatasetError, match=r"frame index 15 is outside video 'walk'"):
        video.iter_frames([2, 15])


# -----------------------------------------------------------------------------
# errors name what is at fault

def test_error_root_and_split(tmp_path):
    with pytest.raises(DatasetError, match=r"dataset root .*nowhere does not exist"):
        load_split("ucsd", tmp_path / "nowhere", "test")
    (tmp_path / "ds" / "training").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"split folder .*ds/testing is missing"):
        load_split("ucsd", tmp_path / "ds", "test")
    with pytest.raises(DatasetError, match=r"empty split: no videos found in .*ds/training"):
        load_split("ucsd", tmp_path / "ds", "train")
    with pytest.raises(DatasetError, match="unknown dataset layout 'ped3'"):
        load_split("ped3", tmp_path / "ds", "train")
    with pytest.raises(DatasetError, match="unknown split 'val'"):
        load_split("ucsd", tmp_path / "ds", "val")


def test_error_video_folder_without_frames(tmp_path):
    root = ucsd_dataset(tmp_path / "ds")
    (root / "training" / "frames" / "02").mkdir()
    (root / "training" / "frames" / "02" / "notes.txt").write_text("no frames here")
    with pytest.raises(DatasetError, match=r"video folder .*frames/02 has no frames"):
        load_split("ucsd", root, "train")


def test_error_labels_longer_or_shorter(tmp_path):
    root = tmp_path / "sh"
    write_frames(root / "testing" / "01_0001", 8, 0)
    (root / "testframemask").mkdir()
    np.save(root / "testframemask" / "01_0001.npy", np.zeros(10, np.uint8))
    with pytest.raises(DatasetError, match=r"01_0001\.npy are longer than video '01_0001': 10 labels for 8"):
        load_split("shanghaitech", root, "test")
    np.save(root / "testframemask" / "01_0001.npy", np.zeros(5, np.uint8))
    with pytest.raises(DatasetError, match=r"shorter than video '01_0001': 5 labels for 8"):
        load_split("shanghaitech", root, "test")


def test_error_interval_outside_video_and_wrong_count(tmp_path):
    root = ucsd_dataset(tmp_path / "ds", test_lengths=(12, 10))
    save_gt(root / "ped2.mat", [[3, 5], [4, 11]])
    with pytest.raises(DatasetError, match=r"ped2\.mat: entry 2 \(video '02'\).*\[4, 11\].*1\.\.10"):
        load_split("ucsd", root, "test")
    save_gt(root / "ped2.mat", [[3, 5]])
    with pytest.raises(DatasetError, match=r"ped2\.mat has 1 label entries but there are 2 test videos"):
        load_split("ucsd", root, "test")


def test_error_labels_missing(tmp_path):
    root = ucsd_dataset(tmp_path / "ds")
    with pytest.raises(DatasetError, match=r"test labels missing for layout 'ucsd'.*ped2\.mat"):
        load_split("ucsd", root, "test")
    with pytest.raises(DatasetError, match=r"label file .*other\.mat does not exist"):
        load_split("ucsd", root, "test", label_file=tmp_path / "other.mat")
    sh = tmp_path / "sh"
    write_frames(sh / "testing" / "01_0001", 8, 0)
    (sh / "testframemask").mkdir()
    with pytest.raises(DatasetError, match=r"no labels for test video '01_0001'.*01_0001\.npy"):
        load_split("shanghaitech", sh, "test")


def test_error_video_shorter_than_clip(tmp_path):
    root = ucsd_dataset(tmp_path / "ds", train_lengths=(8, 3))
    with pytest.raises(DatasetError, match=r"video '02' .* has 3 frames: shorter than the clip length T=4"):
        load_split("ucsd", root, "train", min_frames=4)
    assert len(load_split("ucsd", root, "train", min_frames=3)) == 2


def test_error_corrupt_frame_names_the_file(tmp_path):
    root = ucsd_dataset(tmp_path / "ds")
    bad = root / "training" / "frames" / "01" / "004.png"
    bad.write_bytes(b"not a png at all")
    (video,) = load_split("ucsd", root, "train")
    assert video.read_frame(3).shape == (24, 32, 3)
    with pytest.raises(DatasetError, match=r"frame .*01/004\.png.* corrupt"):
        video.read_frame(4)
    with pytest.raises(DatasetError, match=r"004\.png"):
        list(video.iter_frames())


def test_error_unopenable_video_file(tmp_path):
    video = Video("broken", tmp_path / "broken.avi", None, 10)
    (tmp_path / "broken.avi").write_bytes(b"\x00" * 100)
    with pytest.raises(DatasetError, match=r"broken\.avi"):
        video.read_frame(0)


# -----------------------------------------------------------------------------
# checked decoding: truncated files and frames of another size

@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_frame_is_an_error_naming_it(tmp_path, suffix):
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    good, bad = tmp_path / f"good{suffix}", tmp_path / f"bad{suffix}"
    cv2.imwrite(str(good), image)
    content = good.read_bytes()
    bad.write_bytes(content[:len(content) // 2])
    assert cv2.imread(str(bad)) is not None or suffix == ".png"            # OpenCV alone decodes a JPEG half
    assert read_image(good).shape == (48, 64, 3)
    with pytest.raises(DatasetError, match=rf"{bad.name} is truncated or corrupt"):
        read_image(bad)
    padded = tmp_path / f"padded{suffix}"
    padded.write_bytes(content + b"\x00" * 16)                              # trailing padding is allowed
    assert read_image(padded).shape == (48, 64, 3)


def test_frame_of_another_size_names_both_frames(tmp_path):
    root = ucsd_dataset(tmp_path / "ds")
    folder = root / "training" / "frames" / "01"
    odd = sorted(folder.iterdir())[5]
    cv2.imwrite(str(odd), np.zeros((10, 20, 3), np.uint8))
    (video,) = load_split("ucsd", root, "train")
    assert video.decode(4).shape[:2] == (24, 32)
    with pytest.raises(DatasetError, match=rf"{odd.name} is 20x10 but the video's first frame .*000\.png is 32x24"):
        list(video.iter_frames())


def test_video_file_frame_count_and_sizes_checked(tmp_path):
    path = tmp_path / "v.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 24))
    for i in range(6):
        writer.write(np.full((24, 32, 3), 40 * i, np.uint8))
    writer.release()
    video = Video("v", path, None, 6)
    assert [i for i, _ in video.iter_frames()] == list(range(6)) and video.frame_size == (32, 24)
    with pytest.raises(DatasetError, match=r"v\.avi ended after 6 frames"):
        list(Video("v", path, None, 9).iter_frames([8]))
