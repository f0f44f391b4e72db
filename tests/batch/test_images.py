"""The image example of docs/batch-tensors.md, end to end: PNG files written here, read with
Spark's `binaryFile` source, decoded with Pillow, scored by a torch CNN exported as a bare
`model.onnx`, and compared with onnxruntime run on the very same pixels."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pyspark.sql import SparkSession

from batch import ScoringError, score_dataframe
from batch.images import decode, decode_images
from tests import byom
from tests.batch.conftest import Direct
from tests.conftest import REPO

GUIDE = REPO / "docs" / "batch-tensors.md"


def write_digits(folder: Path, count: int) -> np.ndarray:
    """The first digits as 8-bit greyscale PNG files; returns their pixels as uint8."""
    folder.mkdir()
    pixels = np.round(byom.digits_images(count)[:, 0] * 255).astype(np.uint8)
    for i, image in enumerate(pixels):
        Image.fromarray(image, mode="L").save(folder / f"digit-{i:03d}.png")
    return pixels


def guide_example() -> str:
    """The image example's code block in the guide, which this test runs as it is written."""
    text = GUIDE.read_text()
    block = text.split("<!-- tested: tests/batch/test_images.py -->", 1)[1]
    return block.split("```python\n", 1)[1].split("```", 1)[0]


def test_png_files_scored_by_a_cnn(
    spark: SparkSession, byom_repo: Path, direct: Direct, tmp_path: Path
):
    pixels = write_digits(tmp_path / "digits", 30)
    (tmp_path / "digits" / "digit-999.png").write_bytes(b"not a png")
    output = tmp_path / "scored"
    names = {"spark": spark, "folder": str(tmp_path / "digits"), "output": str(output)}
    exec(guide_example(), {**names, "model": str(byom_repo / "digits_cnn")})  # as written
    rows = spark.read.parquet(str(output)).orderBy("path").collect()
    # the same pixels, straight into onnxruntime
    expected = direct("digits_cnn", {"image": pixels[:, None].astype(np.float32) / 255})
    good = [r for r in rows if r["pred_error"] is None]
    assert len(good) == 30
    got = np.array([r["pred_scores"] for r in good], np.float32)
    np.testing.assert_allclose(got, expected["scores"], atol=1e-5)
    broken = rows[-1]
    assert broken["path"].endswith("digit-999.png")
    assert broken["image_error"].startswith("not an image Pillow can read: cannot identify")
    assert broken["pred_error"] == "'image' is null"
    assert broken["pred_scores"] is None


def png(array: np.ndarray, mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def test_decode_channels_first_or_last_and_resize():
    rgb = np.zeros((4, 6, 3), np.uint8)  # 4 high, 6 wide
    rgb[..., 0] = 255
    first = decode(png(rgb, "RGB"), mode="RGB")
    assert first.shape == (3, 4, 6) and first.dtype == np.float32
    np.testing.assert_allclose(first[0], 1.0, atol=1e-6)
    np.testing.assert_allclose(first[1:], 0.0)
    last = decode(png(rgb, "RGB"), mode="RGB", size=(3, 2), channels_first=False)
    assert last.shape == (2, 3, 3)
    grey = decode(png(rgb, "RGB"), mode="L", scale=1.0)
    assert grey.shape == (1, 4, 6) and grey.max() == 76  # Pillow's luma of pure red


def test_a_wrong_mode_is_refused_before_any_work(spark: SparkSession):
    df = spark.createDataFrame([], "content binary")
    with pytest.raises(ScoringError, match="mode 'RBG' is not a Pillow image mode"):
        decode_images(df, mode="RBG")


def test_an_rgb_image_for_a_grey_model_is_a_row_error(
    spark: SparkSession, byom_repo: Path, tmp_path: Path
):
    df = spark.createDataFrame([(png(np.zeros((8, 8, 3), np.uint8), "RGB"),)], "content binary")
    scored = score_dataframe(decode_images(df, mode="RGB"), byom_repo / "digits_cnn")
    assert scored.first()["pred_error"] == (  # type: ignore[index]
        "'image' has shape [3, 8, 8]; expected [1, 8, 8] (-1: any size)"
    )
