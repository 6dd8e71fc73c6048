"""Scenes as small frozen descriptions, rendered with PIL: hashable, so a benchmark writes each image once.

A `Scene` is a background colour plus shapes and at most one text (a number); everything is integer so the
same seed gives byte-identical PNGs. The font is DejaVu Sans Bold, which ships with matplotlib.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

SIZE = 64
"""Image side in pixels (the synth-vlm tower sees 64x64: 16 px patches, 16 tokens per image)."""

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 170, 60),
    "blue": (45, 80, 215),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 180),
    "orange": (240, 130, 30),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
GREY = (128, 128, 128)
WHITE = (245, 245, 245)
BLACK = (15, 15, 15)


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: tuple[int, int, int]
    x: int  # centre
    y: int
    r: int  # half size


@dataclass(frozen=True)
class Scene:
    background: tuple[int, int, int]
    shapes: tuple[Shape, ...] = ()
    text: str | None = None
    text_colour: tuple[int, int, int] = BLACK
    text_xy: tuple[int, int] = (8, 20)


@functools.cache
def font(size: int = 17) -> ImageFont.FreeTypeFont:
    """DejaVu Sans Bold from matplotlib's data directory (no system fonts needed)."""
    import matplotlib

    path = f"{matplotlib.get_data_path()}/fonts/ttf/DejaVuSans-Bold.ttf"
    return ImageFont.truetype(path, size)


def _draw_shape(draw: ImageDraw.ImageDraw, s: Shape) -> None:
    box = (s.x - s.r, s.y - s.r, s.x + s.r, s.y + s.r)
    if s.kind == "circle":
        draw.ellipse(box, fill=s.colour)
    elif s.kind == "square":
        draw.rectangle(box, fill=s.colour)
    elif s.kind == "triangle":
        draw.polygon([(s.x, s.y - s.r), (s.x - s.r, s.y + s.r), (s.x + s.r, s.y + s.r)], fill=s.colour)
    elif s.kind == "diamond":
        draw.polygon([(s.x, s.y - s.r), (s.x + s.r, s.y), (s.x, s.y + s.r), (s.x - s.r, s.y)], fill=s.colour)
    else:
        raise ValueError(f"unknown shape {s.kind!r}; known: {', '.join(SHAPES)}")


def render(scene: Scene, size: int = SIZE) -> Image.Image:
    """The scene as an RGB image of `size` x `size` (coordinates are given for `SIZE` and scaled)."""
    im = Image.new("RGB", (SIZE, SIZE), scene.background)
    draw = ImageDraw.Draw(im)
    for s in scene.shapes:
        _draw_shape(draw, s)
    if scene.text is not None:
        draw.text(scene.text_xy, scene.text, fill=scene.text_colour, font=font())
    return im if size == SIZE else im.resize((size, size), Image.Resampling.BICUBIC)
