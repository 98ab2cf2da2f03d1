"""Video files -> exact uint8 frames with PyAV, seeking to the frames asked for instead of decoding everything.

Frame numbering. Frame ``i`` of a video is the i-th frame in presentation order, the same frame that decoding the
whole stream from the start would yield at position ``i``. :func:`probe_video` builds the video's frame table by
*demuxing* (reading packets, no decoding; about 1 ms for a 7 s 240p clip): every video packet's presentation
timestamp (pts), sorted, is the timestamp of one frame, so ``pts[i]`` names frame ``i`` exactly, for constant and
variable frame rates alike. The keyframe packets give the points decoding can start from.

Reading (:func:`read_frames`) visits the wanted frames in presentation order. For each one, decoding must start at
the last keyframe at or before it. If that keyframe lies beyond the last frame already decoded, we seek to it (one
``container.seek`` skips every frame between); otherwise we keep decoding forward, which is cheaper than going
back. Decoded frames are matched to the wanted ones by pts, so the frames returned are exactly the ones asked
for; ``tests/test_video.py`` checks this against decoding every frame. Containers that seek imprecisely (a
seek that lands after the target, e.g. on B-frame streams indexed by decode time) are caught by the same pts
check: the missing frames are then decoded from the start of the stream, slower but still exact. A stream whose
packets carry no (or duplicate) timestamps cannot be addressed by pts and is decoded from the start every time.

Resizing happens during the YUV -> RGB conversion (libswscale, area filter), so small clips never materialise a
full-size frame as RGB.

Anything that makes a video unusable (not a video, no video stream, zero frames, a packet that does not decode,
a frame that never comes out of the decoder) raises :class:`VideoError` naming the file and the reason.
"""
from __future__ import annotations

import bisect
import hashlib
import json
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Iterator, Optional, Sequence

import av
import numpy as np

from videolab.core.files import atomic_file

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".webm", ".mov")
INTERPOLATION = "AREA"  # libswscale filter for the resize in the RGB conversion (area averaging when shrinking)


class VideoError(Exception):
    """A video that cannot be used (unreadable, no video stream, no frames, undecodable)."""


def is_video_file(path: str) -> bool:
    return path.lower().endswith(VIDEO_EXTENSIONS)


@dataclass(frozen=True)
class VideoIndex:
    """What :func:`probe_video` learns from a video's packets.

    ``pts`` is int64 [num_frames], the sorted presentation timestamps (frame ``i`` has ``pts[i]``), or None when the
    packets carry no usable timestamps (then frames are counted in decode output order and never seeked).
    ``key_pts`` is int64 [K], the sorted timestamps of the keyframes.
    """
    num_frames: int
    width: int
    height: int
    fps: float
    pts: Optional[np.ndarray] = field(default=None, repr=False)
    key_pts: Optional[np.ndarray] = field(default=None, repr=False)

    @property
    def seekable(self) -> bool:
        return self.pts is not None and len(self.key_pts) > 0


@dataclass
class DecodeStats:
    """How a read went: frames that came out of the decoder, seeks, and fallbacks to decoding from the start."""
    decoded: int = 0
    seeks: int = 0
    fallbacks: int = 0


def _open(path: str):
    if not os.path.isfile(path):
        raise VideoError(f"{path}: file not found")
    if os.path.getsize(path) == 0:
        raise VideoError(f"{path}: empty file (0 bytes)")
    try:
        container = av.open(path)
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise VideoError(f"{path}: not a readable video ({_reason(exc)})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: no video stream")
    return container


def _reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:200]


def probe_video(path: str) -> VideoIndex:
    """Demux every packet of the first video stream (no decoding) -> its :class:`VideoIndex`.

    Raises VideoError for a file that is not a readable video or has no frames.
    """
    container = _open(path)
    try:
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        pts, keys, count = [], [], 0
        try:
            for packet in container.demux(stream):
                if packet.size == 0:  # the demuxer's end-of-stream marker
                    continue
                count += 1
                pts.append(packet.pts)
                if packet.is_keyframe:
                    keys.append(packet.pts)
        except av.FFmpegError as exc:
            raise VideoError(f"{path}: unreadable after {count} packets ({_reason(exc)})") from None
    finally:
        container.close()
    if count == 0:
        raise VideoError(f"{path}: the video stream has 0 frames")
    if width <= 0 or height <= 0:
        raise VideoError(f"{path}: the video stream has no frame size ({width}x{height})")
    if any(p is None for p in pts) or len(set(pts)) != len(pts):
        return _probe_by_decoding(path, width, height, fps)
    return VideoIndex(count, width, height, fps, np.array(sorted(pts), dtype=np.int64),
                      np.array(sorted(k for k in keys if k is not None), dtype=np.int64))


def _probe_by_decoding(path: str, width: int, height: int, fps: float) -> VideoIndex:
    """Packets without usable timestamps: count the frames the decoder puts out (no seeking later)."""
    container = _open(path)
    try:
        count = sum(1 for _ in _decode_all(container, path))
    finally:
        container.close()
    if count == 0:
        raise VideoError(f"{path}: no frame could be decoded")
    return VideoIndex(count, width, height, fps)


def _decode_all(container, path: str) -> Iterator:
    try:
        yield from container.decode(container.streams.video[0])
    except av.FFmpegError as exc:
        raise VideoError(f"{path}: decoding failed ({_reason(exc)})") from None


def _to_rgb(frame, size: Optional[tuple[int, int]]) -> np.ndarray:
    """A decoded frame -> uint8 [H, W, 3] RGB, resized to size = (H, W) if given."""
    if size is None:
        return frame.to_ndarray(format="rgb24")
    return frame.to_ndarray(format="rgb24", width=size[1], height=size[0], interpolation=INTERPOLATION)


def read_frames(path: str, index: VideoIndex, indices: Sequence[int], size: Optional[tuple[int, int]] = None,
                stats: Optional[DecodeStats] = None) -> np.ndarray:
    """Frames ``indices`` of the video (any order, repeats allowed) -> uint8 [len(indices), H, W, 3] RGB.

    ``size`` = (H, W) resizes during the colour conversion; None keeps the stored size. ``stats`` (optional) is
    filled with the decoding work done.
    """
    if not len(indices):
        raise ValueError("read_frames needs at least one frame index")
    bad = [i for i in indices if not 0 <= i < index.num_frames]
    if bad:
        raise ValueError(f"{path}: frame indices {bad[:5]} out of range; the video has {index.num_frames} frames")
    stats = stats if stats is not None else DecodeStats()
    wanted = sorted(set(int(i) for i in indices))
    container = _open(path)
    try:
        if index.seekable:
            by_pts = _read_by_pts(container, path, index, wanted, size, stats)
            got = {i: by_pts[p] for i, p in zip(wanted, index.pts[wanted].tolist()) if p in by_pts}
        else:
            got = _read_in_order(container, path, set(wanted), size, stats)
    finally:
        container.close()
    missing = [i for i in wanted if i not in got]
    if missing:
        raise VideoError(f"{path}: frames {missing[:5]} of {index.num_frames} did not come out of the decoder "
                         f"(corrupt or truncated stream)")
    return np.stack([got[int(i)] for i in indices])


def _read_in_order(container, path: str, wanted: set[int], size, stats: DecodeStats) -> dict[int, np.ndarray]:
    """Decode from the start, counting output frames; keep the wanted ones."""
    got, last = {}, max(wanted)
    for i, frame in enumerate(_decode_all(container, path)):
        stats.decoded += 1
        if i in wanted:
            got[i] = _to_rgb(frame, size)
        if i >= last:
            break
    return got


def _read_by_pts(container, path: str, index: VideoIndex, wanted: list[int], size,
                 stats: DecodeStats) -> dict[int, np.ndarray]:
    """{pts: frame} for the wanted frames: seek to the keyframe before a target when that skips frames, else
    decode on; frames a seek missed are decoded from the start."""
    stream = container.streams.video[0]
    targets = index.pts[wanted].tolist()  # ascending: wanted is sorted and pts is sorted
    target_set, got = set(targets), {}
    frames, last = None, None  # the decoding generator and the pts of the last frame it gave
    for target in targets:
        if target in got:
            continue
        key = index.key_pts[max(bisect.bisect_right(index.key_pts, target) - 1, 0)]
        if frames is None or last is None or key > last:
            _seek(container, stream, int(key), path)
            stats.seeks += 1
            frames, last = _decode_all(container, path), None
        for frame in frames:
            stats.decoded += 1
            last = frame.pts
            if last in target_set and last not in got:
                got[last] = _to_rgb(frame, size)
            if last is not None and last >= target:
                break
        else:
            frames = None  # end of stream
    if len(got) < len(target_set):  # a seek landed after a target: decode from the start
        stats.fallbacks += 1
        _seek(container, stream, int(index.key_pts[0]), path)
        for frame in _decode_all(container, path):
            stats.decoded += 1
            if frame.pts in target_set and frame.pts not in got:
                got[frame.pts] = _to_rgb(frame, size)
            if frame.pts is not None and frame.pts >= targets[-1]:
                break
    return got


def _seek(container, stream, pts: int, path: str) -> None:
    try:
        container.seek(pts, stream=stream, backward=True, any_frame=False)
    except av.FFmpegError as exc:
        raise VideoError(f"{path}: seek failed ({_reason(exc)})") from None


def decode_all_frames(path: str, size: Optional[tuple[int, int]] = None) -> np.ndarray:
    """Every frame in decode output order -> uint8 [N, H, W, 3]. The plain reference :func:`read_frames` is tested
    against; also what the "decode everything, then pick" baseline in benchmarks/decode.py does."""
    container = _open(path)
    try:
        frames = [_to_rgb(frame, size) for frame in _decode_all(container, path)]
    finally:
        container.close()
    if not frames:
        raise VideoError(f"{path}: no frame could be decoded")
    return np.stack(frames)


def count_decoded_frames(path: str) -> tuple[int, int, int]:
    """(frames the decoder puts out, width, height): every frame decoded, none converted, so a file truncated or
    corrupt after its header fails (VideoError) where :func:`probe_video` (packets only) would not."""
    container = _open(path)
    try:
        count = sum(1 for _ in _decode_all(container, path))
        context = container.streams.video[0].codec_context  # its size is known once frames were decoded
        return count, context.width, context.height
    finally:
        container.close()


def resized_shape(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(H, W) with the short side scaled to ``short_side`` and the aspect ratio kept (rounded, at least 1)."""
    scale = short_side / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def write_video(path: str, frames: np.ndarray, fps: int = 25, codec: Optional[str] = None,
                options: Optional[dict] = None, pix_fmt: str = "yuv420p") -> str:
    """uint8 [T, H, W, 3] RGB -> a video file. The codec defaults by extension: mpeg4 for .avi (as UCF101),
    libx264 for .mp4/.mkv/.mov, libvpx-vp9 for .webm. ``options`` are encoder options (e.g. {"g": "5"})."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [T, H, W, 3], got {frames.dtype} {frames.shape}")
    ext = os.path.splitext(path)[1].lower()
    codec = codec or {".avi": "mpeg4", ".webm": "libvpx-vp9"}.get(ext, "libx264")
    with atomic_file(path, keep_extension=True) as tmp, av.open(tmp, "w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        stream.options = {k: str(v) for k, v in (options or {}).items()}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())  # flush the encoder
    return path


def ffmpeg_version() -> str:
    """The FFmpeg libraries PyAV is built on (decoder output can change between versions; part of cache keys)."""
    return getattr(av, "ffmpeg_version_info", "unknown")


# ----------------------------------------------------------------------------------------------------------------
# decoded-frame cache
# ----------------------------------------------------------------------------------------------------------------
CACHE_FORMAT = 1  # bump when what a cache file holds changes


class FrameCache:
    """Decoded, resized frames of whole videos on disk: one ``.npy`` file, uint8 [N, H, W, 3], per video and size.

    The first read of a video decodes all its frames once (sequentially, the cheapest way to get every frame) and
    stores them; later reads of any frames, whatever the sampling, memory-map the file and copy out just those.
    Caching whole videos rather than sampled clips is what lets random temporal sampling (segment, dense) and
    multi-clip evaluation hit the cache. Cost on disk: N x H x W x 3 bytes per video, e.g. a 7 s UCF101 clip at
    short side 112 is 175 x 112 x 149 x 3 = 8.8 MB.

    The key (file name) hashes everything that changes the frames: the video's real path, size and modification
    time (an edited file gets a new entry), the output size, the colour conversion and filter, PyAV's and FFmpeg's
    versions, and :data:`CACHE_FORMAT`. Writes go to a temporary file in the same folder and are moved into place
    with ``os.replace`` (atomic), so DataLoader workers and concurrent runs never read a half-written file; two
    workers that miss on the same video both decode it and the second rename wins with identical bytes.
    A cache file that does not load or does not match the video's frame count is decoded and written again.
    Each process keeps the last :data:`OPEN_FILES` maps open.
    """

    OPEN_FILES = 64  # memory maps kept open per process (opening one costs about as much as reading a clip)

    def __init__(self, root: str):
        self.root = root
        os.makedirs(root, exist_ok=True)
        self._open: OrderedDict[str, np.ndarray] = OrderedDict()  # file -> memory map, least recently used first

    def __getstate__(self) -> dict:  # DataLoader workers start with no open maps (a pickled map would be a copy)
        return dict(self.__dict__, _open=OrderedDict())

    def path_for(self, path: str, size: tuple[int, int]) -> str:
        st = os.stat(path)
        fields = [CACHE_FORMAT, os.path.realpath(path), st.st_size, st.st_mtime_ns, list(size), "rgb24",
                  INTERPOLATION, av.__version__, ffmpeg_version()]
        key = hashlib.sha256(json.dumps(fields).encode()).hexdigest()
        return os.path.join(self.root, key[:2], f"{key}.npy")

    def read(self, path: str, index: VideoIndex, indices: Sequence[int], size: tuple[int, int],
             stats: Optional[DecodeStats] = None) -> np.ndarray:
        """Frames ``indices`` as uint8 [len(indices), H, W, 3], from the cache or decoded (and then stored)."""
        file = self.path_for(path, size)
        frames = self._open.get(file)
        if frames is None:
            frames = self._load(file, index.num_frames, size)
            if frames is None:
                frames = read_frames(path, index, range(index.num_frames), size, stats)  # [N, H, W, 3]
                self._store(file, frames)
            self._remember(file, frames)
        self._open.move_to_end(file)
        return np.ascontiguousarray(frames[np.asarray(indices, dtype=np.int64)])

    def _remember(self, file: str, frames: np.ndarray) -> None:
        """Keep the map (a stored file never changes: its name is its content's identity)."""
        self._open[file] = frames
        while len(self._open) > self.OPEN_FILES:
            self._open.popitem(last=False)

    @staticmethod
    def _load(file: str, num_frames: int, size: tuple[int, int]) -> Optional[np.ndarray]:
        try:
            frames = np.load(file, mmap_mode="r")
        except (OSError, ValueError):  # not there yet, or not a valid .npy
            return None
        if frames.dtype != np.uint8 or frames.shape != (num_frames, *size, 3):
            return None
        return frames

    @staticmethod
    def _store(file: str, frames: np.ndarray) -> None:
        with atomic_file(file) as tmp, open(tmp, "wb") as fh:
            np.save(fh, frames)
