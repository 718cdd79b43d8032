"""Frame-accurate video decoding behind one interface (decord, PyAV, torchcodec), plus JPEG frame folders.

"Frame i" always means the i-th frame a plain forward decode presents (for VFR files too). Backends may
seek to get there faster only where seeking has been shown to land on the same frames; elsewhere they
decode forward from the start. Every failure to deliver exactly the requested frames raises
VideoDecodeError; nothing returns fewer frames or neighbouring frames silently.

A video is a path, or its encoded bytes in memory (a WebDataset member, an object-store download) or a
binary file object; ``name=`` says what errors call an in-memory video.

Readers are opened inside the call (never shared across DataLoader workers) with one decoder thread:
the parallelism is the DataLoader's workers.

Modules: ``common`` (error, source, checks), ``pyav``, ``decord``, ``torchcodec`` (one per backend), ``reader``
(VideoReader, the "auto" choice, probes), ``folders`` (frame folders).
"""
from .common import DecodeCounter, Source, VideoDecodeError, VideoSource
from .decord import DECORD_CODECS
from .folders import count_decodable_frames, count_present_frames, read_frame_folder
from .pyav import SEEKABLE_FORMATS
from .reader import BACKENDS, VideoInfo, VideoReader, count_frames, probe_video, read_frames

__all__ = [
    "BACKENDS", "DECORD_CODECS", "SEEKABLE_FORMATS", "DecodeCounter", "Source", "VideoDecodeError", "VideoInfo",
    "VideoReader", "VideoSource", "count_decodable_frames", "count_frames", "count_present_frames", "probe_video",
    "read_frame_folder", "read_frames",
]
