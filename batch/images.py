"""Decode image files into arrays a model takes: a folder of PNG (or JPEG, ...) files read with
Spark's `binaryFile` source becomes a column of float arrays, nested `[channels, height, width]`
(or `[height, width, channels]`), ready for `score_dataframe`.

    images = spark.read.format("binaryFile").option("pathGlobFilter", "*.png").load("digits/")
    pixels = decode_images(images, mode="L", size=(8, 8))     # adds `image` and `image_error`
    scored = score_dataframe(pixels, "models/digits_cnn")     # the input `image` reads `image`

Pillow decodes in Spark's Python workers, one Arrow batch at a time; only the file bytes travel
to Python. Nested arrays, not flat ones, so that the scorer checks each image's shape against
the model's input: an RGB image given to a one-channel model, or channels last given to a
channels-first one, is a per-row error instead of a silently wrong answer. A file Pillow cannot
read gets a null image and its reason in `<output>_error`; the scorer then reports the row.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import pyarrow as pa
from PIL import Image, UnidentifiedImageError
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.pandas.functions import arrow_udf

from batch.errors import ScoringError
from batch.spec import TensorOutput
from batch.tensor_outputs import Piece, column

_arrow_udf = cast(Any, arrow_udf)  # pyspark's stubs miss the type-hinted form used here
IMAGE = TensorOutput("image", "FP32", 3)


def decode_images(
    df: DataFrame,
    *,
    content: str = "content",
    output: str = "image",
    mode: str = "L",
    size: tuple[int, int] | None = None,
    scale: float = 1 / 255,
    channels_first: bool = True,
) -> DataFrame:
    """`df` with `output` (each image as float32 arrays, `[C, H, W]` or `[H, W, C]`) and
    `<output>_error` appended. `mode` is Pillow's ("L": grey, "RGB", ...); `size` is
    (width, height) as Pillow gives it, resized with bilinear filtering (None: as stored);
    each pixel value is multiplied by `scale` (1/255: 8-bit values to [0, 1])."""
    _check_options(mode, size)
    one = functools.partial(
        decode, mode=mode, size=size, scale=scale, channels_first=channels_first
    )

    def images(contents: pa.Array) -> pa.Array:
        return decode_batch(contents, one)

    kind = "struct<image: array<array<array<float>>>, error: string>"
    struct = _arrow_udf(images, kind)(F.col(f"`{content}`"))
    return df.withColumn(output, struct.getField("image")).withColumn(
        f"{output}_error", struct.getField("error")
    )


def decode_batch(contents: pa.Array, decode: Callable[[bytes], np.ndarray]) -> pa.StructArray:
    """A batch of file contents → each image as nested float arrays, or null and the reason.
    Images of one shape are stacked and turned into lists at once."""
    by_shape: dict[tuple[int, ...], list[tuple[int, np.ndarray]]] = {}
    errors: list[str | None] = []
    for row, data in enumerate(contents.to_pylist()):
        try:
            image = decode(data) if data is not None else None
        except (UnidentifiedImageError, OSError, ValueError) as e:
            errors.append(f"not an image Pillow can read: {e}")
            continue
        if image is None:
            errors.append("the file content is null")
            continue
        errors.append(None)
        by_shape.setdefault(image.shape, []).append((row, image))
    pieces: list[Piece] = [
        (np.array([row for row, _ in group]), {IMAGE.name: np.stack([i for _, i in group])})
        for group in by_shape.values()
    ]
    images = column(pieces, IMAGE, len(contents))
    return pa.StructArray.from_arrays(
        [images, pa.array(errors, pa.string())], names=["image", "error"]
    )


def decode(
    data: bytes,
    mode: str = "L",
    size: tuple[int, int] | None = None,
    scale: float = 1 / 255,
    channels_first: bool = True,
) -> np.ndarray:
    """One file's bytes as a float32 array `[C, H, W]` (or `[H, W, C]`)."""
    with Image.open(io.BytesIO(data)) as opened:
        image = opened.convert(mode)
    if size is not None and image.size != (size[0], size[1]):
        image = image.resize((size[0], size[1]), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, np.float32) * np.float32(scale)
    if pixels.ndim == 2:  # one channel: Pillow gives [H, W]
        pixels = pixels[:, :, None]
    return np.ascontiguousarray(pixels.transpose(2, 0, 1) if channels_first else pixels)


def _check_options(mode: str, size: tuple[int, int] | None) -> None:
    """Refuse, before any work, what would fail on every row."""
    try:
        Image.new(mode, (1, 1))
    except ValueError as e:
        raise ScoringError(f"mode {mode!r} is not a Pillow image mode (e.g. 'L', 'RGB')") from e
    if size is not None and (len(size) != 2 or min(size) < 1):
        raise ScoringError(f"size must be (width, height) in pixels, got {size!r}")
