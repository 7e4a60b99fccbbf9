"""Image preprocessing shared by the image families (finetune/preprocessing.py): bit depths, bad arrays,
file checks."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from finetune.errors import InputError
from finetune.preprocessing import ImagePreprocessor, _to_pil, file_problem, image_file_problem


def _gradient16(size: int = 64) -> np.ndarray:
    return (np.arange(size * size, dtype=np.uint32).reshape(size, size) * 65535 // (size * size - 1)).astype(np.uint16)


def test_a_16_bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    path = tmp_path / 'depth.png'
    Image.fromarray(_gradient16()).save(path)
    assert Image.open(path).mode.startswith('I;16')
    pixels = np.asarray(_to_pil(str(path), 0))[:, :, 0]
    assert (pixels == 255).mean() < 0.01  # clipping made 99.6% of them white
    assert pixels.min() == 0 and pixels.max() == 255
    assert abs(float(pixels.mean()) - 127.5) < 1.0


def test_high_bit_depth_arrays_are_scaled_by_their_depth():
    sixteen = _gradient16()
    np.testing.assert_array_equal(np.asarray(_to_pil(sixteen, 0))[:, :, 0],
                                  np.round(sixteen / 257.0).astype(np.uint8))
    wide = sixteen.astype(np.int32)  # 16-bit values in a wider integer type
    np.testing.assert_array_equal(np.asarray(_to_pil(wide, 0)), np.asarray(_to_pil(sixteen, 0)))
    eight_bit_as_int64 = np.full((4, 4), 200, dtype=np.int64)
    assert np.asarray(_to_pil(eight_bit_as_int64, 0))[0, 0, 0] == 200
    unit_floats = np.full((4, 4, 3), 0.5, dtype=np.float32)
    assert np.asarray(_to_pil(unit_floats, 0))[0, 0, 0] == 127
    assert np.asarray(_to_pil(np.ones((4, 4), dtype=bool), 0))[0, 0, 0] == 255


def test_an_image_array_with_nan_is_an_error_not_black():
    image = np.full((8, 8, 3), 0.5, dtype=np.float32)
    image[2, 3, 1] = np.nan
    with pytest.raises(InputError, match='item 4: the image array holds NaN or infinite values'):
        ImagePreprocessor(8, 8)([np.zeros((8, 8, 3), np.uint8)] * 4 + [image])
    with pytest.raises(InputError, match='negative values'):
        _to_pil(np.full((4, 4), -3, dtype=np.int16), 0)


def test_file_checks_read_only_the_header(tmp_path):
    good = tmp_path / 'good.png'
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    truncated = tmp_path / 'truncated.png'
    truncated.write_bytes(good.read_bytes()[:200])  # header intact: passes; decoding would fail later
    (tmp_path / 'empty.png').write_bytes(b'')
    (tmp_path / 'text.png').write_text('not an image')
    assert file_problem(str(good)) is None and image_file_problem(str(good)) is None
    assert image_file_problem(str(truncated)) is None
    assert file_problem(str(tmp_path / 'missing.png')) == 'does not exist'
    assert file_problem(str(tmp_path / 'empty.png')) == 'is empty'
    assert file_problem(str(tmp_path)) == 'is not a file'
    assert image_file_problem(str(tmp_path / 'text.png')).startswith('is not an image that can be decoded')


def test_16_bit_pixels_scale_whatever_their_values_or_byte_order():
    dark = np.full((4, 4), 200, dtype='>u2')  # big-endian 16-bit (I;16B TIFF), every value below 256
    assert np.asarray(_to_pil(dark, 0))[0, 0, 0] == 1  # 200 / 65535 of full scale, not 200 / 255
    assert np.asarray(_to_pil(np.full((4, 4), 200, dtype=np.uint16), 0))[0, 0, 0] == 1
