"""Stylise video files: decode, stylise batches of frames, encode, streamed and overlapped.

PyAV (FFmpeg's libraries) reads any clip FFmpeg can (mp4, mov, mkv, webm, avi, animated GIF, ...) and
writes H.264 (mp4, mov, mkv, avi), VP9 (webm) or GIF. The output keeps the input's size, frame rate, frame
count and timestamps; audio packets are copied into it unchanged. Frames flow through bounded queues
(``nst_ff.pipeline``): decoding and encoding run in threads beside the network, and memory stays flat
however long the clip. The output appears complete or not at all (``nst_ff.files.atomic_write``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from nst_ff.errors import UserError
from nst_ff.files import OutputError, atomic_write, cannot_write
from nst_ff.media import X264_PRESETS, crf_mistake
from nst_ff.pipeline import overlapped

# Output container and video codec per extension.
_FORMATS = {
    ".mp4": ("mp4", "libx264"),
    ".mov": ("mov", "libx264"),
    ".mkv": ("matroska", "libx264"),
    ".avi": ("avi", "libx264"),
    ".webm": ("webm", "libvpx-vp9"),
    ".gif": ("gif", "gif"),
}
# Constant-quality defaults: visually close to the stylised frames at a moderate size.
DEFAULT_CRF = {"libx264": 20, "libvpx-vp9": 32}


class VideoError(UserError, ValueError):
    """A video file cannot be read or written; the message names the file and what to do."""


@dataclass
class _Batch:
    """Consecutive frames (N, H, W, 3) uint8 RGB with their timestamps and durations (0: unknown), and the audio
    packets demuxed with them."""

    frames: np.ndarray
    pts: list[int]
    durations: list[int] = field(default_factory=list)
    packets: list[av.Packet] = field(default_factory=list)
    rotation: int = 0  # how players turn the frames (the display matrix), degrees counter-clockwise


def _reason(error: BaseException) -> str:
    """FFmpeg's message without the errno and file name PyAV adds."""
    return getattr(error, "strerror", None) or str(error)


def _open_input(source: Path) -> av.container.InputContainer:
    try:
        container = av.open(str(source))
    except FileNotFoundError:
        raise VideoError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise VideoError(f"{source}: is a folder, not a video") from None
    except (av.FFmpegError, OSError, UnicodeDecodeError) as error:
        raise VideoError(f"{source}: not a readable video ({_reason(error)}); re-export or re-download it") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{source}: has no video stream")
    return container


def _frame_count(stream: av.video.stream.VideoStream) -> int | None:
    """From the header: the frame count, else duration x rate; None when the container says neither."""
    if stream.frames:
        return stream.frames
    if stream.duration:
        return round(stream.duration * stream.time_base * _frame_rate(stream))
    return None


def video_megapixels(source: str | Path) -> float:
    """All the frames' pixels in millions, from the header (0 if it does not say): the job's size."""
    container = _open_input(Path(source))
    try:
        stream = container.streams.video[0]
        return (_frame_count(stream) or 0) * stream.codec_context.width * stream.codec_context.height / 1e6
    finally:
        container.close()


def _gif_loop(source: Path) -> int:
    """How often an animated GIF plays, as FFmpeg's GIF muxer counts it: -1 once, 0 forever, N repeats (Pillow
    reads the count, FFmpeg's demuxer drops it). A video made into a GIF plays forever."""
    try:
        with Image.open(source) as image:
            return image.info.get("loop", -1) if image.format == "GIF" else 0
    except (OSError, ValueError):
        return 0


def _frame_rate(stream: av.video.stream.VideoStream) -> Fraction:
    return Fraction(stream.average_rate or stream.guessed_rate or 25)


def _batches(
    source: Path, container: av.container.InputContainer, audio: list[av.audio.stream.AudioStream], batch_size: int
) -> Iterator[_Batch]:
    """Decode the first video stream in batches of ``batch_size`` frames; pass the ``audio`` packets along."""
    stream = container.streams.video[0]
    width, height = stream.codec_context.width, stream.codec_context.height
    rate, time_base = _frame_rate(stream), stream.time_base
    frames: list[np.ndarray] = []
    batch = _Batch(np.empty(0), [])
    count = 0
    try:
        for packet in container.demux(stream, *audio):
            if packet.stream.type == "audio":
                if packet.size:  # the empty packets at the end only flush decoders
                    batch.packets.append(packet)
                continue
            for frame in packet.decode():
                if not frames:
                    batch.rotation = frame.rotation
                # Every frame at the stream's size, even if the stream changes size midway.
                frames.append(frame.to_ndarray(format="rgb24", width=width, height=height))
                batch.pts.append(frame.pts if frame.pts is not None else round(count / rate / time_base))
                batch.durations.append(frame.duration or 0)
                count += 1
                if len(frames) == batch_size:
                    batch.frames = np.stack(frames)
                    yield batch
                    frames, batch = [], _Batch(np.empty(0), [])
    except av.FFmpegError as error:
        reason = _reason(error)
        raise VideoError(f"{source}: broken video at frame {count} ({reason}); re-export or re-download it") from None
    if count == 0:
        raise VideoError(f"{source}: no video frames could be decoded; re-export or re-download it")
    if frames or batch.packets:
        batch.frames = np.stack(frames) if frames else np.empty((0, height, width, 3), np.uint8)
        yield batch


def _gif_frame(rgb: np.ndarray) -> av.VideoFrame:
    """A 256-colour frame with its own palette, as GIF needs: exact when the frame has 256 colours or fewer
    (median cut finds them all; the fast octree merged two greys into one), else octree and dithering."""
    image = Image.fromarray(rgb)
    if image.getcolors(256) is not None:
        image = image.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    else:
        image = image.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.FLOYDSTEINBERG)
    palette = np.zeros((256, 4), np.uint8)
    colours = np.asarray(image.getpalette(), np.uint8).reshape(-1, 3)[:256]
    palette[: len(colours), 0] = 255  # ARGB: opaque
    palette[: len(colours), 1:] = colours
    return av.VideoFrame.from_ndarray((np.asarray(image), palette), format="pal8")


class _Encoder:
    """The output container: a video stream encoding the stylised frames, audio streams copied unchanged."""

    def __init__(
        self,
        file: BinaryIO,
        source: Path,
        target: Path,
        source_stream: av.video.stream.VideoStream,
        audio: list[av.audio.stream.AudioStream],
        rotation: int,
        crf: int | None,
        preset: str,
        speed: int,
    ) -> None:
        container_format, codec = _FORMATS[target.suffix.lower()]
        options = {"loop": str(_gif_loop(source))} if codec == "gif" else {}
        self.output = av.open(file, "w", format=container_format, options=options)
        width, height = source_stream.codec_context.width, source_stream.codec_context.height
        self.stream = self.output.add_stream(codec, rate=_frame_rate(source_stream))
        # Phone videos: stored sideways, shown upright. GIF and AVI cannot say how to show them: their frames are
        # turned upright instead (quarter turns counter-clockwise, as np.rot90 counts them).
        self.turns = round(rotation / 90) % 4 if container_format in ("gif", "avi") else 0
        if self.turns % 2:
            width, height = height, width
        self.stream.width, self.stream.height = width, height
        if rotation and not self.turns:
            self.stream.set_display_rotation(rotation)
        # Non-square pixels (DV, DVD, HDV, anamorphic): without their shape the picture is shown squeezed. H.264
        # records them in its stream; the .webm (VP9) and .gif outputs keep square pixels.
        if source_stream.sample_aspect_ratio:
            aspect = source_stream.sample_aspect_ratio
            self.stream.codec_context.sample_aspect_ratio = 1 / aspect if self.turns % 2 else aspect
        # Frames keep their timestamps, in the input's time base; AVI has no timestamps, only a frame rate.
        self.source_time_base = source_stream.time_base
        self.time_base = 1 / _frame_rate(source_stream) if container_format == "avi" else self.source_time_base
        self.stream.codec_context.time_base = self.time_base
        # Encoders and muxers take only increasing timestamps: a frame whose own does not increase (a broken
        # file's went backwards, or two rounded to one AVI tick) follows the last one by a frame's duration.
        self.frame_ticks = max(1, round(1 / (_frame_rate(source_stream) * self.time_base)))
        self.last_pts: int | None = None
        source_context = source_stream.codec_context
        self.colorspace = None
        if codec == "gif":
            self.stream.pix_fmt = "pal8"
        else:
            # 4:2:0 is what every player takes, but H.264 cannot store an odd width or height in it: odd sizes
            # are kept exactly in 4:4:4 instead (VP9 stores odd sizes in 4:2:0).
            odd = width % 2 or height % 2
            self.stream.pix_fmt = "yuv444p" if odd and codec == "libx264" else "yuv420p"
            crf = DEFAULT_CRF[codec] if crf is None else crf
            if codec == "libx264":
                self.stream.options = {"crf": str(crf), "preset": preset}
            else:
                self.stream.options = {"crf": str(crf), "b": "0", "cpu-used": str(speed), "row-mt": "1"}
            # Keep the input's colour matrix (BT.709 for most HD video) for both conversions.
            if source_context.colorspace in (1, 4, 5, 6, 7):  # the matrices swscale knows
                self.colorspace = source_context.colorspace
                self.stream.codec_context.colorspace = self.colorspace
                self.stream.codec_context.color_primaries = source_context.color_primaries
                self.stream.codec_context.color_trc = source_context.color_trc
        try:
            self.audio = {stream.index: self.output.add_stream_from_template(stream) for stream in audio}
            self.output.start_encoding()
        except (av.FFmpegError, ValueError) as error:
            self.output.close()
            codecs = ", ".join(s.codec_context.name for s in audio)
            advice = f"; its {codecs} audio may not fit: write .mkv, or video.audio=false to drop it" if audio else ""
            raise VideoError(f"{target}: cannot write this video as {target.suffix} ({error}){advice}") from None

    def frame(self, rgb: np.ndarray) -> av.VideoFrame:
        rgb = np.rot90(rgb, self.turns)
        if self.stream.pix_fmt == "pal8":
            return _gif_frame(rgb)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        return frame.reformat(format=self.stream.pix_fmt, dst_colorspace=self.colorspace)

    def write(self, batch: _Batch) -> None:
        for packet in batch.packets:
            packet.stream = self.audio[packet.stream.index]
            self.output.mux(packet)
        for rgb, source_pts, duration in zip(batch.frames, batch.pts, batch.durations, strict=True):
            pts = round(source_pts * self.source_time_base / self.time_base)
            if self.last_pts is not None and pts <= self.last_pts:
                pts = self.last_pts + self.frame_ticks
            frame = self.frame(rgb)
            frame.pts, frame.time_base = pts, self.time_base
            self.last_pts = pts
            packets = self.stream.encode(frame)
            if self.stream.pix_fmt == "pal8" and duration:
                # GIF's muxer takes the last frame's delay from its packet (else the delay before it: a GIF's long
                # last frame was cut short); the encoder leaves it out, and gives one packet per frame at once.
                for packet in packets:
                    packet.duration = round(duration * self.source_time_base / self.time_base)
            self.output.mux(packets)

    def finish(self) -> None:
        self.output.mux(self.stream.encode(None))
        self.output.close()


def stylize_video(
    source: str | Path,
    target: str | Path,
    stylize: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int = 4,
    crf: int | None = None,
    preset: str = "medium",
    speed: int = 4,
    audio: bool = True,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> int:
    """Stylise the video ``source`` into ``target`` (type from its extension: .mp4, .mov, .mkv, .avi: H.264;
    .webm: VP9; .gif); returns the number of frames written.

    ``stylize`` maps (N, 3, H, W) float frames in [0, 1] on ``device`` to stylised frames of the same size,
    ``batch_size`` frames at a time. ``crf``: constant quality (lower is better and larger; default
    ``DEFAULT_CRF``); ``preset``: H.264 encoder speed (``X264_PRESETS``); ``speed``: VP9 encoder speed, 0
    (slowest, smallest) to 8; ``audio``: copy the audio streams (False drops them). Bad files and settings
    raise ``VideoError``; ``target`` is then left as it was.
    """
    source, target = Path(source), Path(target)
    if target.suffix.lower() not in _FORMATS:
        raise VideoError(f"{target}: unknown output video type; end the name with one of {', '.join(_FORMATS)}")
    if preset not in X264_PRESETS:
        raise VideoError(f"video.preset={preset}: unknown; choose one of {', '.join(X264_PRESETS)}")
    if batch_size < 1:
        raise VideoError(f"video.batch_size={batch_size}: must be at least 1")
    if mistake := crf_mistake(crf, target):
        raise VideoError(mistake)
    device = torch.device(device)
    container = _open_input(source)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # decode with several threads
        # A GIF has no sound.
        audio_streams = list(container.streams.audio) if audio and target.suffix.lower() != ".gif" else []
        bar = tqdm(
            total=_frame_count(stream),
            unit="frame",
            desc=source.name,
            disable=not progress,
            file=sys.stderr,
            leave=False,
        )

        def work(batch: _Batch) -> _Batch:
            if len(batch.frames):
                # Frames cross to the device as bytes (4x less than floats) and come back as bytes.
                frames = torch.from_numpy(batch.frames).to(device, non_blocking=True).permute(0, 3, 1, 2)
                out = stylize(frames.float().div_(255))
                # The encoder would take smaller frames or 0..255 values without a word (scaled up, or wrapped
                # around: a video unlike the function's output); other shapes fail deep inside it.
                if not isinstance(out, torch.Tensor) or out.shape != frames.shape or not out.is_floating_point():
                    got = f"{out.dtype} of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else repr(out)
                    raise ValueError(
                        f"stylize returned {got}; it must return float frames in [0, 1] of the shape it was given, "
                        f"{tuple(frames.shape)}"
                    )
                batch.frames = out.mul(255).round_().clamp_(0, 255).byte().permute(0, 2, 3, 1).cpu().numpy()
            return batch

        written = 0

        def write(file: BinaryIO) -> None:
            encoder: _Encoder | None = None

            def save(batch: _Batch) -> None:
                nonlocal encoder, written
                # Opened at the first frames: they say how the output must be rotated for display.
                encoder = encoder or _Encoder(
                    file, source, target, stream, audio_streams, batch.rotation, crf, preset, speed
                )
                encoder.write(batch)
                bar.update(len(batch.frames))
                written += len(batch.frames)

            try:
                overlapped(_batches(source, container, audio_streams, batch_size), work, save, depth=2)
                assert encoder is not None, "_batches yields frames or raises"
                encoder.finish()
            except BaseException:
                if encoder is not None:
                    with suppress(av.FFmpegError, OSError, ValueError):  # the first error is the one to report
                        encoder.output.close()
                raise

        try:
            atomic_write(target, write)
        except OutputError as error:
            raise VideoError(str(error)) from None
        except av.FFmpegError as error:
            raise VideoError(f"{target}: cannot write the video ({_reason(error)})") from None
        except OSError as error:  # PyAV writes through the Python file: a full disk, a quota
            raise VideoError(cannot_write(target, error)) from None
        finally:
            bar.close()
        return written
    finally:
        container.close()
