"""WebDataset tar shards of videos: writing them (launch/make_shards.py) and training from them.

A shard is a plain tar file in WebDataset's layout: the members of one sample share a key and differ by
extension, ``KEY.mp4`` (the encoded video, any container), ``KEY.cls`` (the label as text) and ``KEY.json``
(``{"label", "num_frames", "source"}``). Any WebDataset reader reads them as they are.

Training reads them *by index*: the shards' tar headers are scanned once (each rank scans every world-size-th
shard, all ranks get the merged result) into an index of (shard URL, member name, byte offset, size, label,
frames), and item ``i`` reads its member's bytes with one ranged read and decodes them in memory. So the
shards train exactly like a list file: the trainer's (seed, epoch) permutation, every rank the same number of
batches, bad members skipped, counted and named (``SHARD_URL:MEMBER``), and resume at the exact sample (at
the same world size and batch: the padded length below depends on them). Shards may be local paths or any URL
fsspec opens with seeking (``s3://``, ``gs://``, ``https://``, ...); WebDataset's streaming-only ``pipe:`` URLs cannot
be read by byte range and are refused.

Even split: ``ShardClipDataset(..., pad_to=world * micro_batch * accum)`` has ``len`` = the member count
rounded up to a multiple of ``pad_to``; the extra items repeat members of the index, ``(k + epoch * pad) % N``
for the k-th extra item, with their own random draws. Each epoch therefore trains every member once, plus
those ``pad < pad_to`` repeats, and no rank runs out of samples before another.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from .datasets import VideoClipDataset
from .decode import VideoDecodeError, VideoReader
from .lists import VIDEO_SUFFIXES

DEFAULT_SHARD_BYTES = 1 << 30
_VIDEO_EXTS = tuple(s.lstrip(".") for s in VIDEO_SUFFIXES)


class ShardError(ValueError):
    """A shard set that cannot be used at all (no shards, a shard that cannot be opened or is not a tar)."""


@dataclass(frozen=True)
class ShardMember:
    """One sample of a shard; it stands in for a ``lists.VideoRecord`` (``path`` names it in logs)."""

    path: str            # "SHARD_URL:MEMBER_NAME"
    label: int
    num_frames: int | None
    url: str
    offset: int
    size: int
    start: int = 0
    is_frame_dir: bool = False


# ---- writing -------------------------------------------------------------------------------------------

def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def write_shards(samples: Iterable[tuple[str, int, int]], out_dir: str, shard_bytes: int = DEFAULT_SHARD_BYTES,
                 progress: Callable[[int], None] | None = None) -> list[str]:
    """Pack ``(video path, label, num_frames)`` samples into ``out_dir/shard-NNNNNN.tar``, in order; a new shard
    starts when the next video would take the current one past ``shard_bytes``. Each shard is written under a
    temporary name and renamed when complete. Returns the shard paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths: list[str] = []
    tar, tmp, used = None, "", 0

    def close() -> None:
        if tar is not None:
            tar.close()
            os.replace(tmp, paths[-1])

    try:
        for i, (path, label, num_frames) in enumerate(samples):
            with open(path, "rb") as f:
                data = f.read()
            if tar is None or (used and used + len(data) > shard_bytes):
                close()
                paths.append(os.path.join(out_dir, f"shard-{len(paths):06d}.tar"))
                tmp = paths[-1] + ".partial"
                tar, used = tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT), 0
            key = f"{i:09d}"
            ext = os.path.splitext(path)[1].lower().lstrip(".") or "mp4"
            meta = {"label": int(label), "num_frames": int(num_frames), "source": os.path.basename(path)}
            _add(tar, f"{key}.{ext}", data)
            _add(tar, f"{key}.cls", f"{int(label)}\n".encode())
            _add(tar, f"{key}.json", json.dumps(meta).encode())
            used += len(data) + 3 * 512
            if progress is not None:
                progress(i + 1)
        close()
    except BaseException:
        if tmp and os.path.exists(tmp):
            os.remove(tmp)
        raise
    return paths


def shard_pattern(paths: Sequence[str]) -> str:
    """The ``data.shards`` value naming ``paths`` (as written by ``write_shards``)."""
    folder = os.path.dirname(paths[0])
    if len(paths) == 1:
        return paths[0]
    return os.path.join(folder, f"shard-{{000000..{len(paths) - 1:06d}}}.tar")


# ---- reading -------------------------------------------------------------------------------------------

def shard_urls(spec: str) -> list[str]:
    """The shard URLs of a ``data.shards`` value (WebDataset's brace and ``::`` syntax)."""
    if spec.startswith("pipe:"):
        raise ShardError(f"{spec}: pipe: URLs stream only; shards are read by byte range (a path or fsspec URL)")
    try:  # imported here: a run from list files needs no webdataset installed (the shards extra)
        from webdataset.shardlists import expand_urls
    except ImportError as exc:
        raise ShardError(f"{spec}: data.shards needs the webdataset package (pip install webdataset): {exc}") from None
    urls = expand_urls(spec)
    if not urls:
        raise ShardError(f"{spec}: names no shard")
    return urls


def _open(url: str):
    if "://" not in url or url.startswith("file://"):
        return open(url[len("file://"):] if url.startswith("file://") else url, "rb")
    import fsspec

    return fsspec.open(url, "rb").open()


def _key_ext(name: str) -> tuple[str, str]:
    base = os.path.basename(name)
    dot = base.find(".")
    if dot < 0:
        return name, ""
    return name[: len(name) - len(base) + dot], base[dot + 1:].lower()


def index_shard(url: str) -> list[ShardMember]:
    """The samples of one shard from its tar headers (the video bytes are skipped, the small metadata
    members read). Samples without a video member are left out; label -1 / frames None when not given."""
    try:
        with _open(url) as f, tarfile.open(fileobj=f, mode="r:") as tar:
            entries: dict[str, dict[str, Any]] = {}
            order: list[str] = []
            for info in tar:
                if not info.isfile():
                    continue
                key, ext = _key_ext(info.name)
                if key not in entries:
                    entries[key] = {}
                    order.append(key)
                entry = entries[key]
                if ext in _VIDEO_EXTS and "video" not in entry:
                    entry["video"] = (info.name, info.offset_data, info.size)
                elif ext == "json":
                    entry["meta"] = json.loads(tar.extractfile(info).read())
                elif ext == "cls":
                    entry["cls"] = int(tar.extractfile(info).read().decode().strip())
    except (OSError, tarfile.TarError, ValueError) as exc:
        raise ShardError(f"{url}: not a readable tar shard ({type(exc).__name__}: {exc})") from None
    members = []
    for key in order:
        entry = entries[key]
        if "video" not in entry:
            continue
        name, offset, size = entry["video"]
        meta = entry.get("meta", {})
        label = int(meta.get("label", entry.get("cls", -1)))
        frames = meta.get("num_frames")
        members.append(ShardMember(f"{url}:{name}", label, int(frames) if frames else None, url, offset, size))
    return members


def index_part(urls: Sequence[str], part: int = 0, parts: int = 1) -> list[tuple[int, list[ShardMember]]]:
    """(shard number, samples) of the shards ``part``, ``part + parts``, ...: each rank scans its share."""
    return [(i, index_shard(urls[i])) for i in range(part, len(urls), parts)]


def merge_index(found: Iterable[tuple[int, list[ShardMember]]], spec: str) -> list[ShardMember]:
    """The samples of all parts' shards, shard by shard in the order ``spec`` gives, members in tar order."""
    members = [m for _, part in sorted(found, key=lambda item: item[0]) for m in part]
    if not members:
        raise ShardError(f"{spec}: the shards hold no video member")
    return members


def build_index(spec: str) -> list[ShardMember]:
    """All samples of the shards ``spec`` names (one process scans them all)."""
    return merge_index(index_part(shard_urls(spec)), spec)


def read_member(member: ShardMember) -> bytes:
    """The encoded bytes of ``member`` (one seek and read); a failed or short read is a VideoDecodeError."""
    try:
        with _open(member.url) as f:
            f.seek(member.offset)
            data = f.read(member.size)
    except Exception as exc:  # noqa: BLE001 - whatever the file system raised, this member is unreadable
        raise VideoDecodeError(member.path, f"cannot read the shard: {type(exc).__name__}: {exc}") from None
    if len(data) != member.size:
        raise VideoDecodeError(member.path, f"shard ends after {len(data)} of the member's {member.size} bytes")
    return data


class ShardClipDataset(VideoClipDataset):
    """``VideoClipDataset`` over the members of an index (``build_index``), decoded from memory; ``pad_to``
    rounds its length up so that every rank gets the same number of full batches (module docstring)."""

    def __init__(self, members: Sequence[ShardMember], pad_to: int = 1, **kwargs: Any) -> None:
        super().__init__(members, **kwargs)
        if pad_to < 1:
            raise ValueError(f"pad_to must be >= 1, got {pad_to}")
        self.num_members = len(self.records)
        self.padded_len = -(-self.num_members // pad_to) * pad_to

    def __len__(self) -> int:
        return self.padded_len

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index >= self.num_members:  # the k-th extra item repeats member (k + epoch * pad) % N
            pad = self.padded_len - self.num_members
            index = self.num_members + (index - self.num_members + self.epoch * pad) % self.num_members
        return super().__getitem__(index)

    def _load(self, record: Any, generator: Any) -> Any:
        with VideoReader(read_member(record), self.backend, name=record.path) as reader:
            return self._load_from(record, reader, generator)
