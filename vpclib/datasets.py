"""Videos, clips and ground truth (METHOD.md §1, §9, §10).

A dataset split is a list of `Video`s. A video is either a folder of frames (natural-sorted
file names) or one video file decoded on the fly; a test video also carries its per-frame
labels, a (n_frames,) uint8 array of 0/1.

    load_split(layout, root, split)   -> list[Video]           (layouts: config.DISK_LAYOUTS)
    clip_starts(n_frames, T)          -> (B,) first frame of each clip
    scored_length(n_frames, T)        -> B*T frames that get a score

Ground-truth readers, one per format of §9, each returning per-frame uint8 masks:
`load_interval_mat` (avenue.mat, ped2.mat), `load_ucsd_m` (UCSDped2.m), `load_avenue_pixel_masks`
(testing_label_mask/N_label.mat) and `load_npy_mask` (ShanghaiTech, IITB).
Every inconsistency raises `DatasetError` naming the file, folder or parameter at fault.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import cv2
import numpy as np
import scipy.io

from .config import DISK_LAYOUTS
from .errors import DatasetError

SPLIT_FOLDERS = {"train": "training", "test": "testing"}
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".mov")
EXACT_COUNT_EXTENSIONS = (".mkv",)  # containers whose frame count OpenCV only estimates


# -----------------------------------------------------------------------------
# Videos

def natural_sort(paths: Iterable) -> list:
    """Sort names or paths with the numbers in them compared as numbers: "2.jpg" < "10.jpg"."""
    return sorted(paths, key=_natural_key)


def _natural_key(path) -> list:
    # re.split with a group alternates text, number, text, ...: types line up position by position
    parts = re.split(r"([0-9]+)", str(path))
    return [int(part) if i % 2 else part for i, part in enumerate(parts)]


JPEG_END = b"\xff\xd9"                                  # end-of-image marker
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"             # the IEND chunk


def check_complete(path: Path) -> None:
    """DatasetError if a JPEG or PNG file is cut short (its end marker is missing).

    OpenCV decodes a truncated JPEG with a grey lower part and only prints a warning naming no
    file; the end-of-image marker FF D9 (JPEG) or the IEND chunk (PNG) is what a complete file
    ends with (a few trailing padding bytes are allowed).
    """
    suffix = Path(path).suffix.lower()
    if suffix not in (".jpg", ".jpeg", ".png"):
        return
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 64))
            tail = f.read()
    except OSError as err:
        raise DatasetError(f"cannot read frame {path}: {err.strerror or err}") from None
    marker = JPEG_END if suffix != ".png" else PNG_END
    if marker not in tail.rstrip(b"\x00\r\n "):
        kind = "JPEG end-of-image marker FF D9" if suffix != ".png" else "PNG IEND chunk"
        raise DatasetError(f"frame {path} is truncated or corrupt (no {kind} at its end, {size} bytes): "
                           f"replace the file or remove it from the video folder")


def read_image(path: Path, expected_size: tuple[int, int] | None = None, first: Path | None = None) -> np.ndarray:
    """One frame file as (H, W, 3) uint8 BGR; DatasetError naming the file if unreadable or truncated,
    or if its (width, height) is not `expected_size` (that of the video's first frame, `first`)."""
    check_complete(path)
    frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if frame is None:
        raise DatasetError(f"cannot read frame {path}: missing, unreadable or corrupt image file")
    if expected_size is not None:
        check_frame_size(frame, expected_size, path, first)
    return frame


def check_frame_size(frame: np.ndarray, expected_size: tuple[int, int], where, first) -> None:
    """DatasetError naming both frames when a frame's (width, height) differs from the first frame's."""
    height, width = frame.shape[:2]
    if (width, height) != tuple(expected_size):
        raise DatasetError(f"frame {where} is {width}x{height} but the video's first frame {first} is "
                           f"{expected_size[0]}x{expected_size[1]}: every frame of a video must have one size")


# -----------------------------------------------------------------------------
# Decoder messages: libjpeg, libpng and FFmpeg inside OpenCV report damaged data (e.g. "Corrupt
# JPEG data: premature end of data segment") only by writing to the process's stderr (file
# descriptor 2), naming no file, and still return an image. `decoder_check(video)` reads them.

DECODER_MESSAGE = re.compile(rb"(Corrupt JPEG data|Premature end of JPEG|Invalid JPEG|Bogus |JPEG datastream|"
                             rb"Unsupported JPEG|libpng (warning|error)|\[(h264|hevc|mpeg4|mjpeg|h263|vp[89]|av1)"
                             rb" @ [^]]*\].*(error|corrupt|invalid|missing))", re.I)


class _Stderr:
    """While active, fd 2 is a pipe read by a thread: decoder messages are kept (in order), every
    other byte (progress bars, warnings) is passed on to the real stderr at once."""

    def __init__(self):
        self.lock, self.depth, self.messages = threading.Lock(), 0, []
        self.seen = threading.Condition()
        self.marks, self.active = 0, False

    def start(self) -> bool:
        sys.stderr.flush()
        try:
            self.saved = os.dup(2)
        except OSError:                                     # no stderr to read: nothing to check
            return False
        read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
        self.thread = threading.Thread(target=self._read, args=(read,), daemon=True)
        self.thread.start()
        return True

    def stop(self):
        sys.stderr.flush()
        os.dup2(self.saved, 2)                              # the pipe's last writer closes: the reader ends
        self.thread.join(timeout=5)                         # (unless a child process still holds it open)
        if not self.thread.is_alive():
            os.close(self.saved)

    def _read(self, fd):
        with os.fdopen(fd, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                for line in chunk.splitlines(keepends=True):
                    if line.startswith(b"\x00vpc-mark"):
                        with self.seen:
                            self.marks = int(line.split()[1])
                            self.seen.notify_all()
                    elif DECODER_MESSAGE.search(line):
                        self.messages.append(line.decode(errors="replace").strip())
                    else:
                        os.write(self.saved, line)

    def mark(self) -> int:
        """How many decoder messages were read so far (everything written before this call included)."""
        if not self.active:
            return 0
        with self.lock:
            self.marks_sent = getattr(self, "marks_sent", 0) + 1
            n = self.marks_sent
        os.write(2, b"\x00vpc-mark %d\n" % n)
        with self.seen:
            self.seen.wait_for(lambda: self.marks >= n, timeout=10)
        return len(self.messages)


_STDERR = _Stderr()


@contextmanager
def native_stderr():
    """Read the decoders' messages while the block runs (nested blocks share one reader)."""
    with _STDERR.lock:
        if _STDERR.depth == 0:
            _STDERR.active = _STDERR.start()
        _STDERR.depth += 1
    try:
        yield _STDERR
    finally:
        with _STDERR.lock:
            _STDERR.depth -= 1
            if _STDERR.depth == 0 and _STDERR.active:
                _STDERR.stop()
                _STDERR.active = False


@contextmanager
def decoder_check(video: "Video"):
    """DatasetError naming the file when the decoder reported damaged data while `video` was decoded
    in the block (in any thread): `raise_if_damaged` with the block's messages."""
    with native_stderr() as err:
        first = err.mark()
        yield
        raise_if_damaged(video, err.messages[first:err.mark()], err)


def raise_if_damaged(video: "Video", messages: list[str], err) -> None:
    """DatasetError naming the file when the decoder reported `messages` while `video` was decoded
    (nothing to do without messages). For a frame folder, the frames are then decoded again one at
    a time to find which files are damaged (nothing else may be decoding meanwhile); for a video
    file, the file is named. err: the active `native_stderr()`."""
    if not messages:
        return
    if video.frame_paths is None:
        raise DatasetError(f"video file {video.source} is damaged: the decoder reported "
                           f"{'; '.join(dict.fromkeys(messages))}")
    damaged = []
    for path in video.frame_paths:
        before = err.mark()
        cv2.imread(str(path), cv2.IMREAD_COLOR)
        found = err.messages[before:err.mark()]
        if found:
            damaged.append(f"{path} ({'; '.join(dict.fromkeys(found))})")
    where = ", ".join(damaged[:5]) + (f" and {len(damaged) - 5} more" if len(damaged) > 5 else "")
    raise DatasetError(f"damaged frame file{'s' if len(damaged) != 1 else ''} in {video.source}: "
                       f"{where or 'the decoder reported ' + '; '.join(dict.fromkeys(messages))}: "
                       f"replace the files or remove them from the video folder")


@dataclass(eq=False)
class Video:
    """One video: a folder of frames or a video file, with labels on the test split."""
    name: str                                             # e.g. "01" or "01_0014"
    source: Path                                          # frame folder or video file
    frame_paths: list[Path] | None = field(repr=False)    # natural-sorted; None for a video file
    n_frames: int
    labels: np.ndarray | None = field(default=None, repr=False)  # (n_frames,) uint8 0/1

    def read_frame(self, i: int) -> np.ndarray:
        """Frame i as (H, W, 3) uint8 BGR. For a video file this decodes frames 0..i."""
        [(_, frame)] = self.iter_frames([i])  # runs the decoder to its end: the file is released
        return frame

    def iter_frames(self, indices: Iterable[int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (i, (H, W, 3) uint8 BGR frame) for the wanted frames (all by default).

        Each wanted frame is decoded once, in increasing order (duplicates are dropped). A video
        file is decoded sequentially: unwanted frames are only grabbed, never converted.
        Indices are checked here, before the first frame is decoded.
        """
        wanted = self._wanted(indices)
        if self.frame_paths is None:
            return self._checked_video_frames(wanted)
        return ((i, self.decode(i)) for i in wanted)

    def decode(self, i: int) -> np.ndarray:
        """Frame i of a frame folder, checked: complete file, and the size of frame 0."""
        if self.frame_paths is None:
            return self.read_frame(i)
        return read_image(self.frame_paths[i], self.frame_size, self.frame_paths[0])

    def _checked_video_frames(self, wanted):
        for i, frame in _decode_video_file(self.source, wanted, self.n_frames):
            check_frame_size(frame, self.frame_size, f"{i} of video file {self.source}", "(frame 0)")
            yield i, frame

    @cached_property
    def frame_size(self) -> tuple[int, int]:
        """(width, height) of the frames, read from the first frame."""
        if self.frame_paths is not None:
            frame = read_image(self.frame_paths[0])
        else:
            [(_, frame)] = _decode_video_file(self.source, [0], self.n_frames)
        height, width = frame.shape[:2]
        return width, height

    def _wanted(self, indices: Iterable[int] | None) -> list[int]:
        if indices is None:
            return list(range(self.n_frames))
        wanted = sorted({int(i) for i in indices})
        if wanted and (wanted[0] < 0 or wanted[-1] >= self.n_frames):
            bad = wanted[0] if wanted[0] < 0 else wanted[-1]
            raise DatasetError(f"frame index {bad} is outside video '{self.name}' ({self.source}), "
                               f"which has frames 0..{self.n_frames - 1}")
        return wanted


def _decode_video_file(path: Path, wanted: list[int], n_frames: int) -> Iterator[tuple[int, np.ndarray]]:
    """Decode a video file once from the start, retrieving only the wanted (sorted) frames."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise DatasetError(f"cannot open video file {path}")
    try:
        position = 0  # index of the next frame the decoder will deliver
        for i in wanted:
            while position < i:
                if not capture.grab():
                    raise DatasetError(f"video file {path} ended after {position} frames, "
                                       f"but {n_frames} were expected")
                position += 1
            ok, frame = capture.read()
            if not ok or frame is None:
                raise DatasetError(f"cannot decode frame {i} of video file {path} "
                                   f"({n_frames} frames expected)")
            position += 1
            yield i, frame
    finally:
        capture.release()


def count_video_frames(path: Path) -> int:
    """Number of frames of a video file: the container's count, or a full grab() pass where
    the container only estimates it (.mkv) or reports nothing."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise DatasetError(f"cannot open video file {path}")
    try:
        n_frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        if n_frames <= 0 or path.suffix.lower() in EXACT_COUNT_EXTENSIONS:
            n_frames = 0
            while capture.grab():
                n_frames += 1
    finally:
        capture.release()
    return n_frames


def list_frames(folder: Path) -> list[Path]:
    """Natural-sorted frame files of a folder (FRAME_EXTENSIONS, hidden files skipped)."""
    return natural_sort(p for p in folder.iterdir()
                        if p.is_file() and p.suffix.lower() in FRAME_EXTENSIONS
                        and not p.name.startswith("."))


# -----------------------------------------------------------------------------
# Clips (METHOD.md §1)

def clip_starts(n_frames: int, clip_length: int, skip_first_frame: bool = False) -> np.ndarray:
    """(B,) int64 first frame of each non-overlapping clip of T = clip_length frames.

    Clip k holds frames start_k .. start_k + T - 1 with start_k = k*T, or 1 + k*T when the
    first frame is skipped (IITB). Trailing frames that do not fill a clip get no clip.
    """
    if clip_length < 1:
        raise DatasetError(f"clip_length must be at least 1, got {clip_length}")
    if n_frames < 0:
        raise DatasetError(f"n_frames must be non-negative, got {n_frames}")
    offset = 1 if skip_first_frame else 0
    n_clips = max(n_frames - offset, 0) // clip_length
    return offset + clip_length * np.arange(n_clips, dtype=np.int64)  # (B,)


def scored_length(n_frames: int, clip_length: int, skip_first_frame: bool = False) -> int:
    """Number of frames that get a score, B*T; labels are truncated to labels[:B*T].

    With skip_first_frame (IITB) the scored frames are 1..B*T but the labels kept are still
    labels[:B*T]: the reference's off-by-one, kept on purpose (METHOD.md §9).
    """
    return len(clip_starts(n_frames, clip_length, skip_first_frame)) * clip_length


# -----------------------------------------------------------------------------
# Ground truth (METHOD.md §9)

def intervals_to_mask(intervals: np.ndarray, n_frames: int, where: str = "intervals") -> np.ndarray:
    """(n_frames,) uint8 mask from 1-based inclusive ranges: (2, K) [starts; ends], or (2,); a range
    outside 1..n_frames raises DatasetError naming `where`."""
    mask = np.zeros(n_frames, dtype=np.uint8)
    for start, end in _as_ranges(intervals, where):
        _check_range(start, end, n_frames, where)
        mask[start - 1:end] = 1
    return mask


def _as_ranges(intervals, where: str) -> list[tuple[int, int]]:
    """(K,) list of (start, end) from a (2, K) array, a (2,) array or MATLAB's (1, 2) row."""
    intervals = np.asarray(intervals)
    if intervals.size == 0:
        return []
    if intervals.ndim == 1 or intervals.shape == (1, 2):
        intervals = intervals.reshape(2, 1)  # one range: [start; end]
    if intervals.ndim != 2 or intervals.shape[0] != 2:
        raise DatasetError(f"{where}: expected a 2 x K array of [start; end] frame ranges, "
                           f"got shape {intervals.shape}")
    if not np.issubdtype(intervals.dtype, np.number) or not np.all(intervals == np.round(intervals)):
        raise DatasetError(f"{where}: frame ranges must be whole numbers, got {intervals.tolist()}")
    return [(int(s), int(e)) for s, e in intervals.T]


def _check_range(start: int, end: int, n_frames: int, where: str) -> None:
    if not 1 <= start <= end <= n_frames:
        raise DatasetError(f"{where}: range [{start}, {end}] does not lie within the video's "
                           f"frames 1..{n_frames} (1-based, inclusive)")


def _where(path, index: int, names: Sequence[str] | None) -> str:
    video = f" (video '{names[index]}')" if names is not None else ""
    return f"{path}: entry {index + 1}{video}"


def _check_count(path, n_entries: int, lengths: Sequence[int]) -> None:
    if n_entries != len(lengths):
        raise DatasetError(f"{path} has {n_entries} label entries but there are "
                           f"{len(lengths)} test videos")


def load_interval_mat(path, lengths: Sequence[int], names: Sequence[str] | None = None) -> list[np.ndarray]:
    """Per-video (n_frames,) uint8 masks from an interval .mat (avenue.mat, ped2.mat).

    Variable `gt`: a (1, V) cell of 2 x K arrays of 1-based inclusive [start; end] ranges
    (a 1-D pair when K = 1). `lengths` gives each test video's frame count, in order.
    """
    path = Path(path)
    gt = _loadmat(path, "gt")
    if gt.dtype == object:
        entries = list(gt.ravel())
    elif gt.ndim == 3:
        entries = list(gt)                      # (V, 2, K) numeric: equal K for every video
    elif len(lengths) == 1:
        entries = [gt]                          # a single video saved as a bare 2 x K matrix
    else:
        raise DatasetError(f"{path}: variable 'gt' should be a cell of 2 x K ranges, "
                           f"got a {gt.dtype} array of shape {gt.shape}")
    _check_count(path, len(entries), lengths)
    masks = []
    for index, (entry, n_frames) in enumerate(zip(entries, lengths)):
        masks.append(intervals_to_mask(entry, n_frames, _where(path, index, names)))
    return masks


_UCSD_GT_FRAME = re.compile(r"gt_frame\s*=\s*\[([^\]]*)\]")
_UCSD_RANGE = re.compile(r"(\d+)\s*:\s*(\d+)|(\d+)")


def load_ucsd_m(path, lengths: Sequence[int], names: Sequence[str] | None = None) -> list[np.ndarray]:
    """Per-video (n_frames,) uint8 masks from the official UCSDped1.m / UCSDped2.m text.

    Each test video has a line `TestVideoFile{end+1}.gt_frame = [61:180];`; the brackets may
    hold several ranges ("[1:5, 10:20]") or single frames, all 1-based and inclusive.
    """
    path = Path(path)
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        raise DatasetError(f"cannot read UCSD ground-truth file {path}: {e}") from e
    text = "\n".join(line.split("%", 1)[0] for line in text.splitlines())  # drop MATLAB comments
    entries = _UCSD_GT_FRAME.findall(text)
    if not entries:
        raise DatasetError(f"{path}: no 'gt_frame = [...]' entries found; not a UCSD .m file?")
    _check_count(path, len(entries), lengths)
    masks = []
    for index, (entry, n_frames) in enumerate(zip(entries, lengths)):
        where = _where(path, index, names)
        mask = np.zeros(n_frames, dtype=np.uint8)
        for start, end, single in _UCSD_RANGE.findall(entry):
            start, end = (int(start), int(end)) if single == "" else (int(single), int(single))
            _check_range(start, end, n_frames, where)
            mask[start - 1:end] = 1
        masks.append(mask)
    return masks


def load_avenue_pixel_masks(folder, lengths: Sequence[int],
                            names: Sequence[str] | None = None) -> list[np.ndarray]:
    """Per-video (n_frames,) uint8 masks from Avenue's testing_label_mask/N_label.mat files.

    Each file holds `volLabel`, a (1, n_frames) cell of (H, W) pixel masks; a frame is
    anomalous iff its mask has any nonzero pixel. Files are taken in natural order.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"pixel-mask folder {folder} does not exist")
    files = natural_sort(folder.glob("*_label.mat"))
    _check_count(folder, len(files), lengths)
    masks = []
    for index, (path, n_frames) in enumerate(zip(files, lengths)):
        pixel_masks = list(_loadmat(path, "volLabel").ravel())  # n_frames x (H, W)
        if len(pixel_masks) != n_frames:
            video = f"video '{names[index]}'" if names is not None else f"test video {index + 1}"
            raise DatasetError(f"{path} has masks for {len(pixel_masks)} frames but {video} "
                               f"has {n_frames} frames")
        masks.append(np.array([np.asarray(m).sum() > 0 for m in pixel_masks], dtype=np.uint8))
    return masks


def load_npy_mask(path, n_frames: int | None = None) -> np.ndarray:
    """(n_frames,) uint8 0/1 mask from a per-frame .npy file (ShanghaiTech, IITB)."""
    path = Path(path)
    try:
        values = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DatasetError(f"cannot read label file {path}: {e}") from e
    values = np.squeeze(values)
    if values.ndim != 1:
        raise DatasetError(f"label file {path} should hold one value per frame, "
                           f"got shape {values.shape}")
    if not np.all((values == 0) | (values == 1)):
        raise DatasetError(f"label file {path} should hold only 0/1 values, "
                           f"got {np.unique(values)[:5].tolist()}...")
    if n_frames is not None and len(values) != n_frames:
        raise DatasetError(f"label file {path} has {len(values)} frames, expected {n_frames}")
    return values.astype(np.uint8)


def _loadmat(path: Path, variable: str) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"label file {path} does not exist")
    try:
        content = scipy.io.loadmat(str(path))
    except Exception as e:  # scipy raises several types on a bad file
        raise DatasetError(f"cannot read MATLAB file {path}: {e}") from e
    if variable not in content:
        found = [k for k in content if not k.startswith("__")]
        raise DatasetError(f"{path} has no variable '{variable}' (found {found})")
    return np.asarray(content[variable])


def load_labels(source, videos: Sequence[Video]) -> list[np.ndarray]:
    """Per-video (n_frames,) uint8 masks for `videos` from one label source, by its kind.

    A .mat file: intervals (`gt`). A .m file: UCSD text. A folder with *_label.mat files: Avenue
    pixel masks. Any other folder: one <video>.npy (or <video>/<video>.npy) per video.
    """
    source = Path(source)
    lengths = [v.n_frames for v in videos]
    names = [v.name for v in videos]
    if source.is_dir():
        if any(source.glob("*_label.mat")):
            return load_avenue_pixel_masks(source, lengths, names)
        return [_load_video_npy(source, v) for v in videos]
    if not source.is_file():
        raise DatasetError(f"label file {source} does not exist")
    suffix = source.suffix.lower()
    if suffix == ".mat":
        return load_interval_mat(source, lengths, names)
    if suffix == ".m":
        return load_ucsd_m(source, lengths, names)
    if suffix == ".npy" and len(videos) == 1:
        return [_load_video_npy(source, videos[0])]
    raise DatasetError(f"label file {source}: unknown ground-truth format (expected a .mat, "
                       f"a .m, or a folder of per-video .npy files)")


def _load_video_npy(source: Path, video: Video) -> np.ndarray:
    """One video's mask from source/<name>.npy or source/<name>/<name>.npy (or the file itself)."""
    if source.is_file():
        path = source
    else:
        candidates = [source / f"{video.name}.npy", source / video.name / f"{video.name}.npy"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise DatasetError(f"no labels for test video '{video.name}': "
                               f"neither {candidates[0]} nor {candidates[1]} exists")
    mask = load_npy_mask(path)
    if len(mask) != video.n_frames:
        kind = "longer" if len(mask) > video.n_frames else "shorter"
        raise DatasetError(f"labels {path} are {kind} than video '{video.name}': "
                           f"{len(mask)} labels for {video.n_frames} frames")
    return mask


# -----------------------------------------------------------------------------
# Dataset layouts (METHOD.md §10)

def load_split(layout: str, root, split: str, *, label_file=None, skip_first_frame: bool = False,
               min_frames: int = 1) -> list[Video]:
    """The videos of one split ("train" or "test") of a dataset laid out as `layout`.

    Layouts (split folder S = training or testing):
      avenue        root/S/frames/NN/*.jpg,  labels root/avenue.mat (or testing_label_mask/)
      shanghaitech  root/S/<video>/N.jpg,    labels root/testframemask/<video>.npy
      iitb          root/S/<video>/*.jpg,    labels root/groundtruth/<video>/<video>.npy
      ucsd          root/S/frames/NN/*,      labels the one root/*.mat (ped2.mat, ...) or UCSDped2.m
      folder        root/S/<video>/<frames>, labels root/labels/<video>.npy (or label_file)
      video         root/S/*.avi|mp4|mkv|mov decoded directly, labels root/labels/<stem>.npy
    A frame layout also accepts its videos directly under S, without the frames/ level.
    The test split always carries labels; `label_file` (a file or folder) overrides the
    default location. Every video needs min_frames frames (the pipeline passes T), one more
    with skip_first_frame.
    """
    if layout not in DISK_LAYOUTS:
        raise DatasetError(f"unknown dataset layout {layout!r}; expected one of {DISK_LAYOUTS}")
    if split not in SPLIT_FOLDERS:
        raise DatasetError(f"unknown split {split!r}; expected one of {tuple(SPLIT_FOLDERS)}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist or is not a folder")
    split_dir = root / SPLIT_FOLDERS[split]
    if not split_dir.is_dir():
        raise DatasetError(f"split folder {split_dir} is missing (layout {layout!r}, split {split!r})")

    videos = _find_video_files(split_dir) if layout == "video" else _find_frame_folders(split_dir, layout)
    if not videos:
        raise DatasetError(f"empty split: no videos found in {split_dir} (layout {layout!r})")
    _check_min_frames(videos, min_frames, skip_first_frame)

    if split == "test":
        source = Path(label_file) if label_file else _default_label_source(layout, root)
        for video, mask in zip(videos, load_labels(source, videos)):
            video.labels = mask  # (n_frames,) uint8
    return videos


def _find_frame_folders(split_dir: Path, layout: str) -> list[Video]:
    parent = split_dir / "frames" if (split_dir / "frames").is_dir() else split_dir
    folders = [p for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if layout == "ucsd":
        folders = [p for p in folders if not p.name.endswith("_gt")]  # official pixel masks
    videos = []
    for folder in natural_sort(folders):
        frames = list_frames(folder)
        if not frames:
            raise DatasetError(f"video folder {folder} has no frames "
                               f"(looked for {', '.join(FRAME_EXTENSIONS)})")
        videos.append(Video(folder.name, folder, frames, len(frames)))
    return videos


def _find_video_files(split_dir: Path) -> list[Video]:
    files = [p for p in split_dir.iterdir()
             if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS and not p.name.startswith(".")]
    return [Video(p.stem, p, None, count_video_frames(p)) for p in natural_sort(files)]


def _check_min_frames(videos: list[Video], min_frames: int, skip_first_frame: bool) -> None:
    needed = min_frames + (1 if skip_first_frame else 0)
    for video in videos:
        if video.n_frames < needed:
            skipped = " plus the skipped first frame" if skip_first_frame else ""
            raise DatasetError(f"video '{video.name}' ({video.source}) has {video.n_frames} frames: "
                               f"shorter than the clip length T={min_frames}{skipped}")


def _default_label_source(layout: str, root: Path) -> Path:
    """Where `layout` keeps its test labels; DatasetError listing the places tried."""
    if layout == "avenue":
        candidates = [root / "avenue.mat", root / "testing_label_mask",
                      root / "ground_truth_demo" / "testing_label_mask"]
    elif layout == "ucsd":
        mats = natural_sort(root.glob("*.mat"))
        if len(mats) > 1:
            raise DatasetError(f"several label files in {root} ({', '.join(p.name for p in mats)}); "
                               f"pass label_file to choose one")
        texts = natural_sort([*root.glob("UCSDped*.m"), *(root / "testing").glob("UCSDped*.m")])
        candidates = mats + texts + [root / "ped2.mat"]
    elif layout == "shanghaitech":
        candidates = [root / "testframemask"]
    elif layout == "iitb":
        candidates = [root / "groundtruth"]
    else:  # folder, video
        candidates = [root / "labels"]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise DatasetError(f"test labels missing for layout {layout!r}: none of "
                       f"{', '.join(str(c) for c in candidates)} exists (or pass label_file)")
