"""Decoding (exact frames, seeking) and the decoded-frame cache, on videos the tests write themselves
(tests/video_fixtures.py)."""
import multiprocessing
import os

import numpy as np
import pytest

from videolab.data import video_io
from video_fixtures import frame_numbers, write_bad_videos, write_index_video
from videolab.data.video_io import DecodeStats, FrameCache, VideoError, decode_all_frames, probe_video, read_frames


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """{name: path}: h264 mp4 (B-frames, GOP 6), mpeg4 avi (GOP 5), h264 mkv; 1 to 40 frames."""
    folder = tmp_path_factory.mktemp("videos")
    specs = {"mp4_40": ("long.mp4", 40), "avi_37": ("long.avi", 37), "mkv_23": ("mid.mkv", 23),
             "avi_7": ("short.avi", 7), "mp4_1": ("one.mp4", 1)}
    return {key: write_index_video(str(folder / name), n) for key, (name, n) in specs.items()}


# ----------------------------------------------------------------------------------------------------------------
# decoding
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key,n", [("mp4_40", 40), ("avi_37", 37), ("mkv_23", 23), ("avi_7", 7), ("mp4_1", 1)])
def test_frames_returned_are_exactly_the_ones_asked_for(videos, key, n):
    index = probe_video(videos[key])
    assert index.num_frames == n and index.seekable
    everything = decode_all_frames(videos[key])  # the reference: decode every frame in order
    assert frame_numbers(everything) == list(range(n))  # the test videos encode their frame numbers
    rng = np.random.default_rng(n)
    asks = [[n - 1], [0], list(range(n))[::-1]] + [rng.integers(0, n, rng.integers(1, 9)).tolist() for _ in range(12)]
    for ask in asks:  # any order, repeats allowed
        got = read_frames(videos[key], index, ask)
        np.testing.assert_array_equal(got, everything[ask])
        assert frame_numbers(got) == ask


def test_reading_late_frames_seeks_instead_of_decoding_everything(videos):
    index = probe_video(videos["mp4_40"])
    assert len(index.key_pts) >= 5  # GOP 6: several keyframes to seek to
    stats = DecodeStats()
    got = read_frames(videos["mp4_40"], index, [38], stats=stats)
    assert frame_numbers(got) == [38]
    assert stats.seeks == 1 and stats.decoded <= 8 and stats.fallbacks == 0  # one GOP, not 39 frames
    stats = DecodeStats()
    read_frames(videos["mp4_40"], index, [2, 3, 4, 20, 33], stats=stats)
    assert stats.decoded < 25 and stats.seeks >= 2  # skipped the GOPs in between


def test_resize_happens_in_the_colour_conversion(videos):
    index = probe_video(videos["avi_37"])
    shape = video_io.resized_shape(index.height, index.width, 16)
    assert shape == (16, 22)  # 40 x 56 -> short side 16, aspect kept
    got = read_frames(videos["avi_37"], index, [3, 30], size=shape)
    assert got.shape == (2, 16, 22, 3) and got.dtype == np.uint8 and frame_numbers(got) == [3, 30]


def test_unreadable_videos_raise_video_error_naming_the_file(videos, tmp_path):
    bad = write_bad_videos(str(tmp_path), videos["mp4_40"])
    expected = {"zero_byte": "0 bytes", "garbage": "not a readable video", "truncated": "not a readable video",
                "zero_frames": "0 frames"}
    for kind, path in bad.items():
        with pytest.raises(VideoError, match=expected[kind]) as info:
            probe_video(path)
        assert os.path.basename(path) in str(info.value)
    with pytest.raises(VideoError, match="file not found"):
        probe_video(str(tmp_path / "nowhere.mp4"))
    index = probe_video(videos["avi_7"])
    with pytest.raises(ValueError, match="out of range"):
        read_frames(videos["avi_7"], index, [7])


# ----------------------------------------------------------------------------------------------------------------
# cache
# ----------------------------------------------------------------------------------------------------------------
def test_cache_returns_the_decoded_frames_and_then_stops_decoding(videos, tmp_path, monkeypatch):
    cache = FrameCache(str(tmp_path / "cache"))
    path = videos["mp4_40"]
    index = probe_video(path)
    size = video_io.resized_shape(index.height, index.width, 16)
    asks = [[0, 9, 9, 39], [38, 1, 20]]
    first = [cache.read(path, index, ask, size) for ask in asks]
    for ask, got in zip(asks, first):
        np.testing.assert_array_equal(got, read_frames(path, index, ask, size))
    files = [f for _, _, fs in os.walk(tmp_path / "cache") for f in fs]
    assert len(files) == 1 and files[0].endswith(".npy")  # one file per video and size; no temporary left
    monkeypatch.setattr(video_io, "read_frames", lambda *a, **k: pytest.fail("decoded although cached"))
    for ask, got in zip(asks, first):
        np.testing.assert_array_equal(cache.read(path, index, ask, size), got)


def test_cache_key_changes_with_everything_that_changes_the_frames(videos, tmp_path):
    cache = FrameCache(str(tmp_path))
    path = str(tmp_path / "clip.avi")
    write_index_video(path, 10)
    key = cache.path_for(path, (16, 22))
    assert cache.path_for(path, (16, 22)) == key
    assert cache.path_for(path, (32, 45)) != key  # another size
    os.utime(path, ns=(1, 1))
    assert cache.path_for(path, (16, 22)) != key  # the file changed
    index = probe_video(path)
    stored = cache.path_for(path, (16, 22))
    cache.read(path, index, [0], (16, 22))
    with open(stored, "wb") as fh:  # damaged from outside: the next cache that opens it decodes and writes it
        fh.write(b"not numpy")  # again (our writes never change a stored file in place: they rename a new one)
    assert frame_numbers(FrameCache(str(tmp_path)).read(path, index, [4, 7], (16, 22))) == [4, 7]
    assert np.load(stored).shape == (10, 16, 22, 3)


def _fill_cache(args):
    root, path = args
    index = probe_video(path)
    return FrameCache(root).read(path, index, list(range(index.num_frames)), (20, 28)).sum()


def test_cache_writes_are_atomic_under_concurrent_workers(videos, tmp_path):
    """Four processes miss on the same video at once: each decodes and renames; the file is whole."""
    root = str(tmp_path / "cache")
    with multiprocessing.get_context("fork").Pool(4) as pool:
        sums = pool.map(_fill_cache, [(root, videos["avi_37"])] * 4)
    assert len(set(sums)) == 1
    files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
    assert len(files) == 1 and not any(".tmp" in f for f in files)
    np.testing.assert_array_equal(np.load(files[0]), decode_all_frames(videos["avi_37"], (20, 28)))
