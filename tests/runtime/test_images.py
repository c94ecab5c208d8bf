"""runtime.images against crafted files: decompression bombs, lying headers, huge sparse files and
unreadable folders are refused or skipped with one message each, never decoded into memory."""

import os
import struct
import zlib

import cv2
import numpy as np
import pytest

from runtime.images import DEFAULT_MAX_PIXELS, ImageLoadError, find_images, header_size, load_image


def png_header(width, height):
    """A PNG of under 100 bytes whose header claims width x height 8-bit RGB pixels and whose data is one empty row."""
    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    ihdr = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
    return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + chunk(b'IDAT', zlib.compress(b'\0')) + chunk(b'IEND', b'')


def test_headers_give_the_size_without_decoding(tmp_path):
    image = np.zeros((37, 53, 3), np.uint8)
    for suffix in ('.png', '.jpg'):
        cv2.imwrite(str(tmp_path / f'a{suffix}'), image)
        assert header_size(tmp_path / f'a{suffix}') == (37, 53)
    cv2.imwrite(str(tmp_path / 'a.bmp'), image)
    assert header_size(tmp_path / 'a.bmp') is None  # other formats: checked after decoding


@pytest.mark.battery
def test_a_png_claiming_ten_gigapixels_is_refused_from_its_header(tmp_path):
    bomb = tmp_path / 'bomb.png'
    bomb.write_bytes(png_header(100_000, 100_000))
    assert bomb.stat().st_size < 100
    with pytest.raises(ImageLoadError, match=r'bomb.png: 100000 x 100000 is 10000 megapixels, over the limit of 100'):
        load_image(bomb)
    # Past our limit, OpenCV's own refusal (cv2.error) is an ImageLoadError too, not a traceback.
    with pytest.raises(ImageLoadError, match='bomb.png: OpenCV cannot decode it'):
        load_image(bomb, max_pixels=10**11)


@pytest.mark.battery
def test_the_pixel_limit_applies_to_every_format_and_can_be_raised(tmp_path):
    image = np.full((40, 50, 3), 7, np.uint8)
    for suffix in ('.png', '.jpg', '.bmp'):  # PNG/JPEG from the header, BMP after decoding
        cv2.imwrite(str(tmp_path / f'a{suffix}'), image)
        with pytest.raises(ImageLoadError, match='50 x 40 is 0 megapixels, over the limit of 0.001'):
            load_image(tmp_path / f'a{suffix}', max_pixels=1000)
        assert load_image(tmp_path / f'a{suffix}', max_pixels=2000).shape == (40, 50, 3)
    assert DEFAULT_MAX_PIXELS == 100_000_000


@pytest.mark.battery
def test_a_huge_sparse_file_is_refused_without_reading_it(tmp_path, monkeypatch):
    sparse = tmp_path / 'huge.jpg'
    with open(sparse, 'wb') as f:
        f.truncate(3 << 30)  # 3 GB of holes: no disk, but np.fromfile would allocate it all
    monkeypatch.setattr(np, 'fromfile', lambda *a, **k: pytest.fail('the file was read'))
    with pytest.raises(ImageLoadError, match='huge.jpg: 3221 MB is more than an image of at most 100 megapixels'):
        load_image(sparse)


@pytest.mark.battery
def test_an_unreadable_sub_folder_is_reported_and_the_rest_found(tmp_path, monkeypatch):
    for name in ('a.png', 'locked/b.png', 'open/c.png'):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b'')
    scandir = os.scandir

    def locked(path):  # the tests run as root, who can list anything: the folder refuses here
        if os.fspath(path).endswith('locked'):
            raise PermissionError(13, 'Permission denied', os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, 'scandir', locked)
    problems = []
    assert find_images(tmp_path, problems) == [tmp_path / 'a.png', tmp_path / 'open' / 'c.png']
    assert problems == [f'{tmp_path / "locked"}: cannot list this folder (Permission denied)']
    with pytest.raises(ImageLoadError, match='locked: cannot list this folder'):
        find_images(tmp_path)
