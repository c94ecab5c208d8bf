"""COCO-format loading: polygons and both RLE forms round-trip, bad datasets fail clearly, bad
annotations are skipped with a count."""

import json

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from yolact_torch.data.coco import CocoDataset, DatasetError

H, W = 40, 60


def _masks():
    """Three known masks: a rectangle, a triangle (drawn from its polygon), a disc."""
    rect = np.zeros((H, W), np.uint8)
    rect[5:15, 10:30] = 1
    triangle = np.zeros((H, W), np.uint8)
    cv2.fillPoly(triangle, [np.array([[40, 5], [55, 30], [35, 30]], np.int32)], 1)
    disc = np.zeros((H, W), np.uint8)
    cv2.circle(disc, (15, 30), 6, 1, -1)
    return rect, triangle, disc


def _write(tmp_path, annotations, categories=None, image_name='img/a.png', extra_images=()):
    (tmp_path / 'img').mkdir(exist_ok=True)
    cv2.imwrite(str(tmp_path / image_name), np.full((H, W, 3), 128, np.uint8))
    images = [{'id': 7, 'file_name': image_name, 'height': H, 'width': W}, *extra_images]
    data = {'images': images, 'annotations': annotations,
            'categories': categories or [{'id': 3, 'name': 'rect'}, {'id': 9, 'name': 'tri'}, {'id': 5, 'name': 'disc'}]}
    path = tmp_path / 'ann.json'
    path.write_text(json.dumps(data))
    return path


def _ann(i, category, bbox, segmentation):
    return {'id': i, 'image_id': 7, 'category_id': category, 'bbox': bbox, 'iscrowd': 0,
            'segmentation': segmentation, 'area': 1}


def test_polygon_and_rle_forms_round_trip(tmp_path):
    rect, triangle, disc = _masks()
    compressed = mask_utils.encode(np.asfortranarray(disc))
    compressed['counts'] = compressed['counts'].decode('ascii')
    # Uncompressed RLE: run lengths of the column-major mask, starting with a run of zeros.
    runs, value, length = [], 0, 0
    for pixel in rect.flatten(order='F'):
        if pixel == value:
            length += 1
        else:
            runs.append(length)
            value, length = pixel, 1
    runs.append(length)
    polygon = [[40.0, 5.0, 55.0, 30.0, 35.0, 30.0]]
    path = _write(tmp_path, [
        _ann(1, 3, [10, 5, 20, 10], {'size': [H, W], 'counts': runs}),
        _ann(2, 9, [35, 5, 20, 25], polygon),
        _ann(3, 5, [9, 24, 13, 13], compressed),
    ])
    dataset = CocoDataset(path)
    assert dataset.class_names == ('rect', 'disc', 'tri')  # sorted by category id: 3, 5, 9
    assert dataset.category_ids == (3, 5, 9)
    sample = dataset[0]
    assert sample.image_id == 7 and sample.image.shape == (H, W, 3)
    assert sample.labels.tolist() == [0, 2, 1]
    np.testing.assert_array_equal(sample.masks[0], rect)
    np.testing.assert_array_equal(sample.masks[2], disc)
    # pycocotools rasterises polygons by its own rule; the shapes agree up to the edge pixels.
    assert np.logical_xor(sample.masks[1], triangle).sum() < 0.25 * triangle.sum()
    np.testing.assert_allclose(sample.boxes[0], [10, 5, 30, 15])
    assert sample.boxes.dtype == np.float32 and sample.masks.dtype == np.uint8


def test_bad_annotations_are_skipped_and_counted(tmp_path):
    rect, _, _ = _masks()
    rle = mask_utils.encode(np.asfortranarray(rect))
    rle['counts'] = rle['counts'].decode('ascii')
    path = _write(tmp_path, [
        _ann(1, 3, [10, 5, 20, 10], rle),
        _ann(2, 3, [10, 5, 0, 10], rle),            # zero width
        _ann(3, 3, [W + 5, 5, 10, 10], rle),        # right of the image
        _ann(4, 3, [-30, -30, 10, 10], rle),        # above and left of it
        {**_ann(5, 3, [10, 5, 20, 10], rle), 'iscrowd': 1},
        _ann(6, 42, [10, 5, 20, 10], rle),          # no such category
    ])
    dataset = CocoDataset(path)
    assert dict(dataset.skipped) == {'zero-area box': 1, 'box outside the image': 2, 'crowd region': 1,
                                     'unknown category': 1}
    assert '2 box outside the image' in dataset.skipped_summary()
    assert len(dataset[0].labels) == 1


def test_boxes_partly_outside_are_clipped(tmp_path):
    rect, _, _ = _masks()
    path = _write(tmp_path, [_ann(1, 3, [-5, 30, 30, 20], [[0, 30, 25, 30, 25, 39, 0, 39]])])
    np.testing.assert_allclose(CocoDataset(path)[0].boxes[0], [0, 30, 25, H])


def test_require_annotations_keeps_only_annotated_images(tmp_path):
    rect, _, _ = _masks()
    cv2.imwrite(str(tmp_path / 'b.png'), np.zeros((H, W, 3), np.uint8))
    path = _write(tmp_path, [_ann(1, 3, [10, 5, 20, 10], [[10, 5, 30, 5, 30, 15, 10, 15]])],
                  extra_images=[{'id': 8, 'file_name': 'b.png', 'height': H, 'width': W}])
    assert len(CocoDataset(path)) == 2
    assert CocoDataset(path, require_annotations=True).image_ids == [7]
    assert len(CocoDataset(path)[1].labels) == 0


def test_missing_path(tmp_path):
    with pytest.raises(DatasetError, match='does not exist'):
        CocoDataset(tmp_path / 'nope.json')


def test_folder_means_its_train_json(tmp_path):
    with pytest.raises(DatasetError, match='without train.json'):
        CocoDataset(tmp_path)


@pytest.mark.parametrize('text, message', [
    ('{not json', 'not valid JSON'),
    ('[1, 2]', 'not a COCO instances file'),
    ('{"images": [], "annotations": []}', 'not a COCO instances file'),
    ('{"images": [{"id": 1}], "annotations": [], "categories": [{"id": 1, "name": "a"}]}', 'lacks file_name'),
    ('{"images": [], "annotations": [], "categories": []}', 'no categories'),
])
def test_not_coco(tmp_path, text, message):
    path = tmp_path / 'x.json'
    path.write_text(text)
    with pytest.raises(DatasetError, match=message):
        CocoDataset(path)


def test_missing_images_name_the_fix(tmp_path):
    path = _write(tmp_path, [], extra_images=[{'id': 8, 'file_name': 'gone.png', 'height': H, 'width': W}])
    with pytest.raises(DatasetError, match=r'1 of 2 images .* missing .*gone.png.*--images'):
        CocoDataset(path)


def test_images_folder_option(tmp_path):
    path = _write(tmp_path, [], image_name='img/a.png')
    data = json.loads(path.read_text())
    data['images'][0]['file_name'] = 'a.png'
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match='missing'):
        CocoDataset(path)
    assert len(CocoDataset(path, tmp_path / 'img')) == 1
    with pytest.raises(DatasetError, match='--images'):
        CocoDataset(path, tmp_path / 'no_such_folder')


def test_class_count_must_fit_the_config(tmp_path):
    path = _write(tmp_path, [])
    with pytest.raises(DatasetError, match='3 categories .* config has 5 classes'):
        CocoDataset(path, class_names=('a', 'b', 'c', 'd', 'e'))


def test_annotation_of_another_size_is_an_error(tmp_path):
    rle = mask_utils.encode(np.asfortranarray(np.ones((10, 10), np.uint8)))
    rle['counts'] = rle['counts'].decode('ascii')
    path = _write(tmp_path, [_ann(1, 3, [0, 0, 5, 5], rle)])
    with pytest.raises(DatasetError, match='does not match the images'):
        CocoDataset(path)[0]
