"""The video file types and encoder settings, apart from the codecs themselves: importing PyAV costs 0.2 s,
which a photo job, or checking the options, need not pay."""

from __future__ import annotations

from pathlib import Path

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".gif")
# Videos FFmpeg reads that are written as .mp4: iTunes and phones (.m4v, .3gp), camcorders (.mts, .m2ts), Windows,
# Flash, MPEG and Ogg files.
READ_ONLY_VIDEO_EXTENSIONS = (".m4v", ".3gp", ".mts", ".m2ts", ".wmv", ".flv", ".mpg", ".mpeg", ".ogv")
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS + READ_ONLY_VIDEO_EXTENSIONS


def output_suffix(path: str | Path) -> str:
    """The extension of ``path``'s stylised copy: its own, or .mp4 for a video type that is only read."""
    suffix = Path(path).suffix
    return ".mp4" if suffix.lower() in READ_ONLY_VIDEO_EXTENSIONS else suffix


def crf_mistake(crf: int | None, target: str | Path) -> str | None:
    """Why ``video.crf`` does not fit the encoder of ``target``'s type (None if it does): H.264's scale ends at
    51, where FFmpeg clamped a higher value without a word; VP9's at 63; GIF has none."""
    suffix = Path(target).suffix.lower()
    codec, top = ("VP9", 63) if suffix == ".webm" else ("H.264", 51)
    if crf is None or suffix == ".gif" or 0 <= crf <= top:
        return None
    advice = "" if codec == "VP9" else "; lower it, or write .webm (VP9 goes to 63)"
    return f"video.crf={crf}: {codec} ({target}) takes 0 to {top}{advice}"
