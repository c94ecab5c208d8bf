"""The accuracy report on a real export of yolact_tiny (random weights) and a real COCO evaluation.

Untrained weights score nothing on real labels, so the ground truth is made from the FP32 model's
own most confident detections: by construction FP32 must then score 100 AP, its FP16 and INT8
versions a little less, and the same detections under the wrong class labels far less. Those
numbers can only come out of an actual evaluation.
"""

import json

import onnx
import pytest
import torch
from pycocotools import mask as mask_utils

from calib.convert import convert_model
from calib.graph import after_last_convolutions, split_postprocess
from calib.report import TARGET_MASK_AP_DROP, evaluate_models, format_table, main
from export.onnx_export import export_onnx
from yolact_torch.config import yolact_tiny
from yolact_torch.data.coco import CocoDataset
from yolact_torch.data.shapes import main as make_shapes
from yolact_torch.eval import predict_dataset
from yolact_torch.yolact import Yolact
from runtime.backends import open_backend

pytestmark = pytest.mark.slow
DETECTIONS_PER_IMAGE = 3


@pytest.fixture(scope='module')
def models(tmp_path_factory):
    """The FP32 export of a seeded random yolact_tiny, its FP16 and INT8 versions, and a shapes set."""
    folder = tmp_path_factory.mktemp('report')
    make_shapes(['--out', str(folder / 'shapes'), '--train', '6', '--val', '4', '--seed', '3'])
    torch.manual_seed(0)
    fp32 = export_onnx(Yolact(yolact_tiny).eval(), yolact_tiny, folder / 'tiny.onnx')
    fp16 = convert_model(fp32, 'fp16', folder / 'shapes' / 'train.json', count=4).output
    int8 = convert_model(fp32, 'int8', folder / 'shapes' / 'train.json', count=6).output
    return folder, [fp32, fp16, int8]


def own_detections_as_ground_truth(model, data, output):
    """A COCO JSON over `data`'s images whose instances are the model's top detections."""
    dataset = CocoDataset(data)
    with open_backend(model, 'ort') as backend:
        results = predict_dataset(backend, dataset, progress=False)
    truth = json.loads(dataset.json_path.read_text())
    truth['annotations'] = []
    # The most confident detections over the whole set, down to the first with an empty mask (it
    # could not be matched): every other detection scores lower than every ground-truth one.
    ranked = sorted(results, key=lambda r: -r['score'])[:DETECTIONS_PER_IMAGE * len(dataset)]
    for r in ranked:
        area = float(mask_utils.area(r['segmentation']))
        if area == 0:
            break
        truth['annotations'].append({
            'id': len(truth['annotations']) + 1, 'image_id': r['image_id'], 'category_id': r['category_id'],
            'bbox': r['bbox'], 'segmentation': r['segmentation'], 'iscrowd': 0, 'area': area})
    assert truth['annotations'], 'the model detected nothing to build the ground truth from'
    output.write_text(json.dumps(truth))
    return output


def test_report_numbers_come_from_a_real_evaluation(models, capsys):
    folder, (fp32, fp16, int8) = models
    val = folder / 'shapes' / 'val.json'
    truth = own_detections_as_ground_truth(fp32, val, folder / 'shapes' / 'own.json')
    rows = evaluate_models([fp32, fp16, int8], truth, folder / 'shapes', progress=False)
    assert [r.precision for r in rows] == ['fp32', 'fp16', 'int8']
    assert rows[0].metrics['box']['AP'] == pytest.approx(100.0)
    assert rows[0].metrics['mask']['AP'] == pytest.approx(100.0)
    for row in rows[1:]:
        assert 0.0 < row.metrics['mask']['AP'] <= 100.0
        assert row.delta(rows[0], 'mask') <= 0.0
    # FP16 keeps the detections (float16 rounding alone).
    assert rows[1].delta(rows[0], 'mask') > -10 * TARGET_MASK_AP_DROP['fp16']

    # The same detections under other class labels score (almost) nothing.
    wrong = json.loads(truth.read_text())
    ids = [c['id'] for c in wrong['categories']]
    for annotation in wrong['annotations']:
        annotation['category_id'] = ids[(ids.index(annotation['category_id']) + 1) % len(ids)]
    (folder / 'shapes' / 'wrong.json').write_text(json.dumps(wrong))
    relabelled = evaluate_models([fp32], folder / 'shapes' / 'wrong.json', folder / 'shapes', progress=False)
    assert relabelled[0].metrics['mask']['AP'] < 50.0

    table = format_table(rows)
    assert 'fp16' in table and 'int8' in table and '100.00' in table


def test_report_cli_prints_the_table_and_writes_json(models, capsys, tmp_path):
    folder, (fp32, fp16, _) = models
    assert main([str(fp32), str(fp16), '--data', str(folder / 'shapes' / 'val.json'),
                 '--json', str(tmp_path / 'report.json')]) == 0
    out = capsys.readouterr().out
    assert fp32.name in out and fp16.name in out and 'mask AP' in out
    written = json.loads((tmp_path / 'report.json').read_text())
    assert [r['precision'] for r in written] == ['fp32', 'fp16']
    assert written[1]['delta']['mask'] == pytest.approx(written[1]['mask']['AP'] - written[0]['mask']['AP'])


def test_real_int8_quantizes_every_convolution_and_nothing_after_them(models):
    _, (_, _, int8) = models
    model = onnx.load(int8)
    made_by = {o: n for n in model.graph.node for o in n.output}
    dequantized = lambda name: name in made_by and made_by[name].op_type == 'DequantizeLinear'  # noqa: E731
    convs = [n for n in model.graph.node if n.op_type == 'Conv']
    assert convs and all(dequantized(i) for n in convs for i in n.input[:2])
    # The box decoding, softmax and head reshapes (and the post-processing) read no Q/DQ output.
    network = split_postprocess(model).network
    tail = set(after_last_convolutions(network)) | {n.name for n in model.graph.node if n.domain == 'yolact'}
    assert not [n.name for n in model.graph.node if n.name in tail and any(dequantized(i) for i in n.input)]


def test_report_names_a_missing_model(tmp_path, capsys):
    assert main([str(tmp_path / 'nope.onnx'), '--data', str(tmp_path / 'val.json')]) == 1
    assert 'no such model' in capsys.readouterr().err


def test_targets_are_judged_on_the_mask_ap_drop():
    from pathlib import Path

    from calib.report import Row

    def row(precision, box, mask):
        return Row(Path(f'm.{precision}.onnx'), precision,
                   {'box': {'AP': box, 'AP50': box, 'AP75': box}, 'mask': {'AP': mask, 'AP50': mask, 'AP75': mask}})

    base = row('fp32', 50.0, 40.0)
    assert row('fp16', 10.0, 39.85).within_target(base) is True  # the box AP does not count
    assert row('fp16', 50.0, 39.7).within_target(base) is False
    assert row('int8', 50.0, 39.1).within_target(base) is True
    assert row('int8', 50.0, 38.9).within_target(base) is False
    table = format_table([base, row('fp16', 50.0, 39.7), row('int8', 49.0, 39.5)])
    assert 'MISSED (<= 0.2 drop)' in table and 'ok (<= 1.0 drop)' in table and '-1.00' in table
