"""The video file types and encoder settings, apart from the codecs themselves: importing PyAV costs 0.2 s,
which a photo job, or checking the options, need not pay."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from nst_ff.images import IMAGE_EXTENSIONS

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".gif")
# Videos FFmpeg reads that are written as .mp4: iTunes and phones (.m4v, .3gp), camcorders (.mts, .m2ts), Windows,
# Flash, MPEG and Ogg files.
READ_ONLY_VIDEO_EXTENSIONS = (".m4v", ".3gp", ".mts", ".m2ts", ".wmv", ".flv", ".mpg", ".mpeg", ".ogv")
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS + READ_ONLY_VIDEO_EXTENSIONS


def output_suffix(path: str | Path) -> str:
    """The extension of ``path``'s stylised copy: its own where that type is written here; for a type only read,
    .mp4 for a video, .jpg for JPEG's other names (.jfif, .jpe) and .png for any other image (lossless, alpha kept).
    """
    suffix = Path(path).suffix
    if suffix.lower() in READ_ONLY_VIDEO_EXTENSIONS:
        return ".mp4"
    if suffix.lower() in VIDEO_EXTENSIONS + IMAGE_EXTENSIONS:
        return suffix
    # Before: photo.jfif's output was photo_<model>.jfif, refused as an unknown image type after the model loaded.
    return ".jpg" if Image.registered_extensions().get(suffix.lower()) == "JPEG" else ".png"


def crf_mistake(crf: int | None, target: str | Path) -> str | None:
    """Why ``video.crf`` does not fit the encoder of ``target``'s type (None if it does): H.264's scale ends at
    51, where FFmpeg clamped a higher value without a word; VP9's at 63; GIF has none."""
    suffix = Path(target).suffix.lower()
    codec, top = ("VP9", 63) if suffix == ".webm" else ("H.264", 51)
    if crf is None or suffix == ".gif" or 0 <= crf <= top:
        return None
    advice = "" if codec == "VP9" else "; lower it, or write .webm (VP9 goes to 63)"
    return f"video.crf={crf}: {codec} ({target}) takes 0 to {top}{advice}"
