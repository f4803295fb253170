"""The arithmetic of CLIP's resize and crop, with no import of torch: ``ClipTransform`` uses it, and so do the decode
workers that resize frames with Pillow before they reach the model (``pipeline.features.frame_geometry``), so both cut the
same box out of the same frame."""
from __future__ import annotations


def resized_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(h, w) after resizing the short side to ``short_side``; the long side is truncated as torchvision does."""
    if height <= width:
        return short_side, int(short_side * width / height)
    return int(short_side * height / width), short_side


def center_crop_box(height: int, width: int, size: int) -> tuple[int, int]:
    """Top-left corner (top, left) of a centred ``size``×``size`` crop, rounded as torchvision does."""
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))


def three_crop_boxes(height: int, width: int, size: int) -> list[tuple[int, int]]:
    """(top, left) of the start, centre and end ``size`` squares along the long side (the multi-view test)."""
    top, left = center_crop_box(height, width, size)
    if width >= height:
        return [(top, 0), (top, left), (top, width - size)]
    return [(0, left), (top, left), (height - size, left)]
