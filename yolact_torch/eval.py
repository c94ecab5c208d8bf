"""COCO evaluation (box and mask AP) of any model the runtime can load.

    python -m yolact_torch.eval --data shapes/val.json [--model FILE] [--metrics metrics.json]

Images go through the runtime exactly as at deployment (runtime.pipeline: load, resize, backend,
paste masks), detections become COCO results with Detections.to_coco_json, and pycocotools'
COCOeval scores them. So a .pth checkpoint, an ONNX model and a TensorRT engine are evaluated the
same way. This CLI is the one module of `model` that imports `runtime` (it evaluates any model the runtime can load, by design).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import sys
from pathlib import Path

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from yolact_torch.data.coco import CocoDataset
from runtime.backends import BACKENDS, Backend, open_backend
from runtime.checkpoint_flags import add_checkpoint_flags, checkpoint_flags
from runtime.detections import BBOX_SCORE_KEY
from runtime.errors import ToolkitError
from runtime.files import check_writable, write_atomic
from runtime.infer import DEFAULT_MODEL
from runtime.pipeline import ImageLoadError, batches, load_image, predict

# COCOeval.stats rows: 0 = AP@[.50:.95], 1 = AP@.50, 2 = AP@.75.
METRIC_ROWS = {'AP': 0, 'AP50': 1, 'AP75': 2}
IOU_TYPES = {'box': 'bbox', 'mask': 'segm'}


class EvalError(ToolkitError, ValueError):
    """A model and a dataset that cannot be evaluated together; the message says why."""


def _quiet_coco(data: dict) -> COCO:
    """A pycocotools COCO object of already-parsed data, without its progress prints."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def predict_dataset(backend: Backend, dataset: CocoDataset, *, batch_size: int = 8,
                    progress: bool = True) -> list[dict]:
    """COCO results (Detections.to_coco_json entries) of every image of `dataset`, all scores kept.

    Class i of the model is reported as the data's i-th category id (sorted ids, the order
    training uses).
    """
    meta = backend.metadata
    if len(meta.class_names) != len(dataset.class_names):
        raise EvalError(f'the model has {len(meta.class_names)} classes ({", ".join(meta.class_names)}) but '
                        f'{dataset.json_path} has {len(dataset.class_names)} categories: evaluate a model '
                        'trained on this data')
    results: list[dict] = []
    with tqdm(total=len(dataset), desc='evaluating', unit='img', disable=not progress) as bar:
        for image_ids in batches(dataset.image_ids, batch_size):
            try:
                images = [load_image(dataset.image_path(i)) for i in image_ids]
            except ImageLoadError as e:
                raise EvalError(str(e)) from None
            for image_id, dets in zip(image_ids, predict(backend, images, score_threshold=0.0)):
                results += dets.to_coco_json(image_id, dataset.images[image_id]['file_name'],
                                             dataset.class_names, dataset.category_ids)
            bar.update(len(image_ids))
    return results


def coco_metrics(ground_truth: dict, results: list[dict], image_ids: list[int] | None = None) -> dict:
    """{'box': {'AP', 'AP50', 'AP75'}, 'mask': {...}} from COCOeval (values 0..1).

    ground_truth: a COCO instances dict; results: COCO results with both 'bbox' and
    'segmentation' (RLE). Boxes are scored with an entry's BBOX_SCORE_KEY where it has one
    (YOLACT++: the class score before the mask re-scoring, as the original's box AP), masks with
    its 'score'. No results give zeros. image_ids limits the evaluation (default: all).
    """
    gt = _quiet_coco(ground_truth)
    metrics = {}
    for name, iou_type in IOU_TYPES.items():
        # loadRes rewrites its entries in place and picks the box path whenever 'bbox' is present,
        # so each evaluation gets its own copy holding only the geometry it scores.
        drop = 'segmentation' if iou_type == 'bbox' else 'bbox'
        own = [{k: v for k, v in copy.deepcopy(r).items() if k not in (drop, BBOX_SCORE_KEY)} for r in results]
        if iou_type == 'bbox':
            for entry, result in zip(own, results):
                entry['score'] = result.get(BBOX_SCORE_KEY, result['score'])
        if not own:
            metrics[name] = {k: 0.0 for k in METRIC_ROWS}
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            dt = gt.loadRes(own)
            evaluator = COCOeval(gt, dt, iou_type)
            if image_ids is not None:
                evaluator.params.imgIds = list(image_ids)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        # COCOeval reports -1 where there is no ground truth to score: that is no precision at all.
        metrics[name] = {k: max(float(evaluator.stats[row]), 0.0) for k, row in METRIC_ROWS.items()}
    return metrics


def evaluate(model: str | Path, data: str | Path, images: str | Path | None = None, *, backend: str = 'auto',
             batch_size: int = 8, progress: bool = True, **backend_options) -> dict:
    """Box and mask AP, AP50, AP75 of the model file on a COCO instances JSON."""
    dataset = CocoDataset(data, images)
    with open_backend(model, backend, **backend_options) as runner:
        results = predict_dataset(runner, dataset, batch_size=batch_size, progress=progress)
    ground_truth = json.loads(dataset.json_path.read_text())
    return coco_metrics(ground_truth, results)


def format_metrics(metrics: dict) -> str:
    lines = [f'{"":6}' + ''.join(f'{k:>8}' for k in METRIC_ROWS)]
    for name, values in metrics.items():
        lines.append(f'{name:6}' + ''.join(f'{values[k]:8.3f}' for k in METRIC_ROWS))
    return '\n'.join(lines)


def write_metrics(path: Path, metrics: dict) -> None:
    """The metrics as JSON, written to a temporary name and renamed (never half-written)."""
    write_atomic(path, (json.dumps(metrics, indent=2) + '\n').encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog='python -m yolact_torch.eval',
        description='COCO box and mask AP, AP50, AP75 (pycocotools COCOeval) of a model on a COCO dataset.')
    parser.add_argument('--model', type=Path, default=DEFAULT_MODEL,
                        help='model file any runtime backend loads: .pth (torch), ... '
                             '(default: the demo model, runtime/assets/yolact_tiny_shapes.pth)')
    parser.add_argument('--backend', default='auto', choices=['auto', *BACKENDS],
                        help='inference backend; auto picks it from the file suffix (default: auto)')
    parser.add_argument('--data', required=True, type=Path, help='COCO instances JSON with the ground truth')
    parser.add_argument('--images', type=Path, help='image folder (default: the JSON\'s folder)')
    parser.add_argument('--metrics', type=Path, help='also write the metrics to this JSON file')
    parser.add_argument('--batch', type=int, default=8, help='images per inference call (default: 8)')
    add_checkpoint_flags(parser)
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error('--batch must be at least 1')
    try:
        if args.metrics:  # before the evaluation, which takes minutes
            check_writable(args.metrics, '--metrics')
        metrics = evaluate(args.model, args.data, args.images, backend=args.backend, batch_size=args.batch,
                           **checkpoint_flags(args))
        print(format_metrics(metrics))
        if args.metrics:
            write_metrics(args.metrics, metrics)
            print(f'wrote {args.metrics}')
    except ToolkitError as e:  # DatasetError, BackendError, EvalError, CheckpointError, OutputError: all say what to fix
        print(f'error: {e}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
