"""Video loading benchmark: our loader against bare PyAV seeking, decode-everything and torchcodec, 0 / 2
DataLoader workers, and cached against uncached epochs.

    python benchmarks/decode.py --json benchmarks/decode_cpu.json      # a few minutes on 2 CPU cores
    python benchmarks/decode.py --methods torchcodec --no_cache --json benchmarks/decode_torchcodec_cpu.json

Videos (written into a temporary folder): 320x240, 25 fps, 5 s and 10 s long; mpeg4 in .avi as UCF101 ships
(FFmpeg's default GOP of 12 frames) and h264 in .mp4 (libx264 defaults with a keyframe every 2 s, B-frames).
Content is a panning gradient with moving shapes and light noise, which compresses like camera footage (white
noise would not).

Every method gives the model the same input: the same 8 frame indices (uniform sampling), decoded at a 112 px
short side during the colour conversion, centre-cropped and normalised by ``VLoader.eval_views``; each is a
Dataset iterated by a torch DataLoader (batch 8) with 0 and 2 workers:

* ours: ``video_datasets.VideoFileDataset`` (the packet index is built once, when the dataset is made;
  ``video_io.read_frames`` seeks to the keyframe before a wanted frame only when that skips frames);
* (a) bare PyAV seek-and-decode: for each index, ``container.seek`` to its timestamp (constant frame rate
  assumed) and decode up to it, the textbook loop, with no check that the frame returned is the one asked for;
* (b) decode every frame, then pick the 8;
* (c) torchcodec (``VideoDecoder``, exact seek mode: it indexes the file first, as ours does; ``get_frames_at``
  the 8 indices, resized by its ``Resize`` decoder transform, bilinear with antialiasing). Its full-size frames are
  checked against PyAV's (decode everything, same indices): they must be identical. Resized, they differ from
  ours by the filter (bilinear vs libswscale's area), reported as the largest pixel difference.

Each repetition runs one epoch of every method, interleaved, after one warm-up epoch each; clips/s is the median
over repetitions and every ratio is the median of the per-repetition ratios. Every ratio is also given in CPU
time (this process, its decoder threads and its DataLoader workers, via psutil): on a machine shared with other
jobs, wall-clock ratios swing with their load, CPU-time ratios much less. Cache: ours with a ``FrameCache``:
the first (filling) epoch decodes whole videos and writes them, later epochs read them; compared with uncached
epochs of ours in the same repetitions. Also reported: the one-time index cost per video, and how many clips of
(a) returned frames other than the ones asked for (compared with decoding everything).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import av
import numpy as np
import psutil
import torch
from torch.utils.data import DataLoader, Dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from videolab.evaluation.measure import median_time  # noqa: E402
from videolab.core.files import write_json  # noqa: E402
from videolab.data.videos import VideoFileDataset, VideoItem  # noqa: E402
from videolab.data.video_io import (INTERPOLATION, FrameCache, decode_all_frames, probe_video, resized_shape,  # noqa: E402
                      write_video)
from videolab.data.clips import collate  # noqa: E402
from videolab.data.sampling import ClipSpec, sample_frame_indices  # noqa: E402
from videolab.data.transforms import eval_views  # noqa: E402

WIDTH, HEIGHT, FPS = 320, 240, 25
FORMATS = {"avi": ("mpeg4", {"b": "1M"}), "mp4": ("libx264", {"g": "50", "crf": "23"})}  # ~UCF101 / phone bit rates
MEAN, STD = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)


# ----------------------------------------------------------------------------------------------------------------
# videos
# ----------------------------------------------------------------------------------------------------------------
def camera_like_frames(num_frames: int, seed: int) -> np.ndarray:
    """uint8 [T, 240, 320, 3]: a slowly panning colour gradient, three moving ellipses, light noise."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    colours = rng.uniform(40, 220, (4, 3)).astype(np.float32)
    centres, speeds = rng.uniform(0, 1, (3, 2)) * (WIDTH, HEIGHT), rng.normal(0, 2.5, (3, 2))
    frames = np.empty((num_frames, HEIGHT, WIDTH, 3), np.uint8)
    for t in range(num_frames):
        phase = (xs + 1.5 * t) / WIDTH
        frame = colours[0] * (0.6 + 0.4 * np.sin(2 * np.pi * phase))[..., None] + 0.3 * ys[..., None]
        for k in range(3):
            cx, cy = (centres[k] + speeds[k] * t) % (WIDTH, HEIGHT)
            inside = ((xs - cx) / 30) ** 2 + ((ys - cy) / 20) ** 2 < 1
            frame[inside] = colours[k + 1]
        frame += rng.normal(0, 3, frame.shape)
        frames[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return frames


def write_videos(folder: str, per_group: int, seconds: tuple) -> dict[str, list[str]]:
    """{'avi 5s': [paths], ...}: ``per_group`` videos of every format and length."""
    groups = {}
    for fmt, (codec, options) in FORMATS.items():
        for length in seconds:
            paths = []
            for k in range(per_group):
                path = os.path.join(folder, f"{fmt}_{length}s_{k}.{fmt}")
                write_video(path, camera_like_frames(length * FPS, seed=k), fps=FPS, codec=codec, options=options)
                paths.append(path)
            groups[f"{fmt} {length}s"] = paths
    return groups


# ----------------------------------------------------------------------------------------------------------------
# the three loaders (same output: float [T, 3, S, S])
# ----------------------------------------------------------------------------------------------------------------
class _Baseline(Dataset):
    def __init__(self, paths: list[str], spec: ClipSpec):
        self.paths, self.spec = paths, spec

    def __len__(self) -> int:
        return len(self.paths)

    def frames(self, path: str) -> np.ndarray:
        raise NotImplementedError

    def __getitem__(self, i: int) -> dict:
        video = torch.from_numpy(self.frames(self.paths[i])).permute(0, 3, 1, 2)  # [T, 3, H, W]
        return dict(pixel_values=eval_views(video, self.spec.image_size, self.spec.mean, self.spec.std)[0],
                    labels=torch.tensor(0))


class BareSeek(_Baseline):
    """(a) For each sampled index: seek to its timestamp, decode until a frame at or after it."""

    def frames(self, path: str) -> np.ndarray:
        with av.open(path) as container:
            stream = container.streams.video[0]
            size = resized_shape(stream.height, stream.width, self.spec.image_size)
            step = 1 / (stream.average_rate * stream.time_base)  # pts per frame, constant frame rate assumed
            start = stream.start_time or 0
            out = []
            for index in sample_frame_indices(stream.frames, self.spec.num_frames):
                target = start + int(round(index * step))
                container.seek(target, stream=stream, backward=True)
                for frame in container.decode(stream):
                    if frame.pts >= target:
                        out.append(frame.to_ndarray(format="rgb24", width=size[1], height=size[0],
                                                    interpolation=INTERPOLATION))
                        break
        return np.stack(out)


class DecodeAll(_Baseline):
    """(b) Decode every frame (resized in the conversion, as ours), then pick the sampled ones."""

    def frames(self, path: str) -> np.ndarray:
        with av.open(path) as container:
            stream = container.streams.video[0]
            size = resized_shape(stream.height, stream.width, self.spec.image_size)
        frames = decode_all_frames(path, size)
        return frames[sample_frame_indices(len(frames), self.spec.num_frames)]


class TorchCodec(_Baseline):
    """(c) torchcodec: index the file (exact seek mode), get the sampled frames, resized while converting."""

    def frames(self, path: str, resize: bool = True) -> np.ndarray:
        from torchcodec.decoders import VideoDecoder
        from torchcodec.transforms import Resize
        index = probe_video(path)  # the same frame count, so the same indices as ours
        size = resized_shape(index.height, index.width, self.spec.image_size)
        decoder = VideoDecoder(path, dimension_order="NHWC", seek_mode="exact", num_ffmpeg_threads=1,
                               transforms=[Resize(size)] if resize else None)
        return decoder.get_frames_at(sample_frame_indices(index.num_frames, self.spec.num_frames)).data.numpy()


def torchcodec_frames(paths: list[str], spec: ClipSpec) -> tuple[bool, int]:
    """(torchcodec's full-size frames equal PyAV's for every clip, largest |difference| of its resized frames from
    ours)."""
    codec = TorchCodec(paths, spec)
    identical, worst = True, 0
    for path in paths:
        reference = decode_all_frames(path)
        indices = sample_frame_indices(len(reference), spec.num_frames)
        identical &= np.array_equal(codec.frames(path, resize=False), reference[indices])
        index = probe_video(path)
        size = resized_shape(index.height, index.width, spec.image_size)
        resized = decode_all_frames(path, size)[indices]  # ours' frames (== read_frames, tested)
        worst = max(worst, int(np.abs(codec.frames(path).astype(int) - resized).max()))
    return identical, worst


def ours(paths: list[str], spec: ClipSpec, cache_dir: str | None = None) -> VideoFileDataset:
    items = [VideoItem(p, 0, os.path.basename(p)) for p in paths]
    return VideoFileDataset(items, ["clip"], spec, "report", cache=FrameCache(cache_dir) if cache_dir else None)


# ----------------------------------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------------------------------
def loader(dataset: Dataset, workers: int, batch_size: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate,
                      persistent_workers=workers > 0)


def cpu_seconds() -> float:
    """CPU time of this process (all its threads, FFmpeg's included) and of its live children (DataLoader
    workers): unlike wall time, barely changed by other programs competing for the cores."""
    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return total


def epoch_seconds(data: DataLoader) -> tuple[float, float]:
    """(wall, CPU) seconds of one pass over ``data``."""
    cpu, t0 = cpu_seconds(), time.perf_counter()
    for _ in data:
        pass
    return time.perf_counter() - t0, cpu_seconds() - cpu


def compare(datasets: dict[str, Dataset], workers: int, repeats: int, batch_size: int) -> dict:
    """clips/s (wall) and clips per CPU second of every dataset (interleaved epochs after a warm-up each), and
    the per-repetition ratios of 'ours' to each other one (median), in both."""
    loaders = {name: loader(ds, workers, batch_size) for name, ds in datasets.items()}
    for data in loaders.values():
        epoch_seconds(data)  # warm-up: worker start-up, file cache, first-use costs
    times = {name: [] for name in loaders}
    for _ in range(repeats):
        for name, data in loaders.items():
            times[name].append(epoch_seconds(data))
    n = len(next(iter(datasets.values())))
    result = {}
    for name, t in times.items():
        result[f"{name}_clips_per_s"] = n / statistics.median(wall for wall, _ in t)
        result[f"{name}_clips_per_cpu_s"] = n / statistics.median(cpu for _, cpu in t)
    for name in times:
        if name != "ours":
            for k, what in ((0, ""), (1, "_cpu")):
                result[f"ours_vs_{name}{what}"] = statistics.median(b[k] / a[k] for a, b in zip(times["ours"],
                                                                                              times[name]))
    return result


def check_frames(paths: list[str], spec: ClipSpec) -> tuple[int, bool]:
    """(clips whose bare-seek frames differ from the same indices of decode-everything, whether every clip of ours
    equals decode-everything's)."""
    bare, everything, mine = BareSeek(paths, spec), DecodeAll(paths, spec), ours(paths, spec)
    wrong = 0
    for i, path in enumerate(paths):
        got = bare.frames(path)
        reference = decode_all_frames(path, got.shape[1:3])
        wrong += not np.array_equal(got, reference[sample_frame_indices(len(reference), spec.num_frames)])
    exact = all(torch.equal(mine[i]["pixel_values"], everything[i]["pixel_values"]) for i in range(len(paths)))
    return wrong, exact


def cache_comparison(paths: list[str], spec: ClipSpec, workers: int, repeats: int, batch_size: int,
                     cache_dir: str) -> dict:
    """Ours uncached vs ours cached (after a filling epoch), interleaved; the filling epoch timed on its own."""
    cached = loader(ours(paths, spec, cache_dir), workers, batch_size)
    fill, _ = epoch_seconds(cached)  # decodes whole videos and writes them (cold cache only on the first call)
    result = compare(dict(ours=ours(paths, spec), cached=ours(paths, spec, cache_dir)), workers, repeats, batch_size)
    result = dict(uncached_clips_per_s=result["ours_clips_per_s"], cached_clips_per_s=result["cached_clips_per_s"],
                  cached_vs_uncached=1 / result["ours_vs_cached"],
                  cached_vs_uncached_cpu=1 / result["ours_vs_cached_cpu"], first_epoch_clips_per_s=len(paths) / fill)
    del cached
    return result


METHODS = {"bare_seek": BareSeek, "decode_all": DecodeAll, "torchcodec": TorchCodec}


def torchcodec_version():
    try:
        import torchcodec
    except ImportError:
        return None
    return torchcodec.__version__


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per_group", type=int, default=8, help="videos per format and length")
    parser.add_argument("--seconds", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--num_frames", type=int, default=8)
    parser.add_argument("--image_size", type=int, default=112)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS),
                        default=[m for m in METHODS if m != "torchcodec" or torchcodec_version()],
                        help="loaders compared with ours (default: all; torchcodec when installed)")
    parser.add_argument("--no_cache", action="store_true", help="skip the cache comparison")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    spec = ClipSpec(args.num_frames, args.image_size, MEAN, STD)
    results = dict(pyav=av.__version__, ffmpeg=getattr(av, "ffmpeg_version_info", None), torch=torch.__version__,
                   torchcodec=torchcodec_version(), cpu_count=os.cpu_count(), settings=vars(args), rows=[], cache=[])
    with tempfile.TemporaryDirectory() as folder:
        t0 = time.perf_counter()
        groups = write_videos(folder, args.per_group, tuple(args.seconds))
        print(f"wrote {sum(map(len, groups.values()))} videos in {time.perf_counter() - t0:.0f}s", flush=True)
        every = [p for paths in groups.values() for p in paths]
        results["index_ms_per_video"] = 1000 * statistics.median(median_time(lambda p=p: probe_video(p), 3)
                                                                  for p in every)
        for group, paths in groups.items():
            wrong, exact = check_frames(paths, spec)
            checks = dict(bare_seek_wrong_clips=wrong, ours_equals_decode_all=exact)
            if "torchcodec" in args.methods:
                identical, worst = torchcodec_frames(paths, spec)
                checks.update(torchcodec_full_size_equals_pyav=identical, torchcodec_resized_max_diff=worst)
            for workers in args.workers:
                row = dict(group=group, workers=workers, videos=len(paths), **checks,
                           **compare(dict(ours=ours(paths, spec), **{m: METHODS[m](paths, spec) for m in args.methods}),
                                     workers, args.repeats, args.batch_size))
                results["rows"].append(row)
                print(f"[{group}, {workers} workers] ours {row['ours_clips_per_s']:.1f} clips/s | "
                      + " | ".join(f"{m} {row[f'{m}_clips_per_s']:.1f} ({row[f'ours_vs_{m}']:.2f}x, CPU "
                                   f"{row[f'ours_vs_{m}_cpu']:.2f}x)" for m in args.methods)
                      + f" | {checks}", flush=True)
        for workers in ([] if args.no_cache else args.workers):
            cache_dir = os.path.join(folder, f"cache_{workers}")
            row = dict(workers=workers, videos=len(every),
                       **cache_comparison(every, spec, workers, args.repeats, args.batch_size, cache_dir))
            row["cache_mib"] = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(cache_dir)
                                   for f in fs) / 2 ** 20
            results["cache"].append(row)
            print(f"[cache, {workers} workers] uncached {row['uncached_clips_per_s']:.1f} clips/s | first epoch "
                  f"{row['first_epoch_clips_per_s']:.1f} | cached {row['cached_clips_per_s']:.1f} "
                  f"({row['cached_vs_uncached']:.1f}x, CPU {row['cached_vs_uncached_cpu']:.1f}x) | "
                  f"{row['cache_mib']:.0f} MiB on disk", flush=True)
    print(f"index (probe) per video: {results['index_ms_per_video']:.2f} ms, once per dataset")
    if args.json:
        write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
