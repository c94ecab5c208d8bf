"""python -m calib.report: what FP16 and INT8 cost in accuracy, measured.

    python -m calib.report --data shapes/val.json MODEL.onnx MODEL.fp16.onnx MODEL.int8.onnx ...

Every model is evaluated with onnxruntime by yolact_torch.eval (the runtime's own pre-processing, mask
pasting and pycocotools' COCOeval), and box and mask AP are printed side by side with the change
against the first model (the FP32 baseline), in AP points. A variant converted with
`--keep-sensitive` listed beside the plain one shows what keeping the prototype and coefficient
layers in FP32 buys.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import onnx

from calib.graph import model_metadata
from runtime.errors import ToolkitError

# Largest mask AP drop (points) against FP32 that the issue accepts, per precision.
TARGET_MASK_AP_DROP = {'fp16': 0.2, 'int8': 1.0}
METRICS = ('AP', 'AP50', 'AP75')
KINDS = ('box', 'mask')


@dataclass(frozen=True)
class Row:
    """One evaluated model. metrics: {'box': {'AP', 'AP50', 'AP75'}, 'mask': {...}} in AP points (0..100)."""

    model: Path
    precision: str
    metrics: dict

    def delta(self, baseline: 'Row', kind: str, metric: str = 'AP') -> float:
        return self.metrics[kind][metric] - baseline.metrics[kind][metric]

    def within_target(self, baseline: 'Row') -> bool | None:
        """Whether the mask AP drop is within TARGET_MASK_AP_DROP (None: no target for this precision)."""
        target = TARGET_MASK_AP_DROP.get(self.precision)
        return None if target is None else -self.delta(baseline, 'mask') <= target


def model_precision(path: Path) -> str:
    """The precision recorded in the model's metadata (fp32, fp16 or int8)."""
    return model_metadata(onnx.load(path, load_external_data=False)).precision


def evaluate_models(models: list[Path], data: Path, images: Path | None = None, *, batch_size: int = 8,
                    progress: bool = True) -> list[Row]:
    """Evaluate each ONNX model with onnxruntime on the COCO JSON `data`; AP in points."""
    from yolact_torch.eval import evaluate

    rows = []
    for path in models:
        metrics = evaluate(path, data, images, backend='ort', batch_size=batch_size, progress=progress)
        rows.append(Row(path, model_precision(path),
                        {kind: {m: 100.0 * metrics[kind][m] for m in METRICS} for kind in KINDS}))
    return rows


def format_table(rows: list[Row]) -> str:
    """The side-by-side table; deltas are against rows[0]."""
    baseline = rows[0]
    width = max(len(r.model.name) for r in rows)
    header = (f'{"model":<{width}}  {"prec":<4}  {"box AP":>6} {"delta":>6}  {"mask AP":>7} {"delta":>6}  '
              f'{"box AP50":>8}  {"mask AP50":>9}  target')
    lines = [header, '-' * len(header)]
    for row in rows:
        is_base = row is baseline
        box_delta = '' if is_base else f'{row.delta(baseline, "box"):+6.2f}'
        mask_delta = '' if is_base else f'{row.delta(baseline, "mask"):+6.2f}'
        within = None if is_base else row.within_target(baseline)
        target = '' if within is None else (
            f'{"ok" if within else "MISSED"} (<= {TARGET_MASK_AP_DROP[row.precision]} drop)')
        lines.append(
            f'{row.model.name:<{width}}  {row.precision:<4}  {row.metrics["box"]["AP"]:6.2f} {box_delta:>6}  '
            f'{row.metrics["mask"]["AP"]:7.2f} {mask_delta:>6}  {row.metrics["box"]["AP50"]:8.2f}  '
            f'{row.metrics["mask"]["AP50"]:9.2f}  {target}'.rstrip())
    return '\n'.join(lines)


def rows_to_json(rows: list[Row]) -> list[dict]:
    baseline = rows[0]
    return [{'model': str(r.model), 'precision': r.precision, **r.metrics,
             'delta': {kind: r.delta(baseline, kind) for kind in KINDS}} for r in rows]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='python -m calib.report', description=__doc__.split('\n\n')[0])
    parser.add_argument('models', nargs='+', type=Path,
                        help='ONNX models to compare; the first is the baseline (the FP32 export)')
    parser.add_argument('--data', required=True, type=Path, help='COCO instances JSON of the evaluation set')
    parser.add_argument('--images', type=Path, default=None, help="image folder (default: the JSON's folder)")
    parser.add_argument('--batch', type=int, default=8, help='images per inference call (default: %(default)s)')
    parser.add_argument('--json', type=Path, default=None, help='also write the table as JSON to this file')
    parser.add_argument('--check', action='store_true',
                        help='exit 1 when a model misses its mask AP target: a drop against the baseline of '
                             f'at most {TARGET_MASK_AP_DROP["fp16"]} points for FP16, {TARGET_MASK_AP_DROP["int8"]} for INT8')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    missing = [str(m) for m in args.models if not m.is_file()]
    if missing:
        print(f'error: no such model: {", ".join(missing)} (make export / make calib write them)', file=sys.stderr)
        return 1
    try:
        rows = evaluate_models(args.models, args.data, args.images, batch_size=args.batch)
    except ToolkitError as e:  # CalibrationError, DatasetError, BackendError, EvalError
        print(f'error: {e}', file=sys.stderr)
        return 1
    print(f'{args.data}: AP in points, deltas against {rows[0].model.name}')
    print(format_table(rows))
    if args.json is not None:
        from yolact_torch.eval import write_metrics

        write_metrics(args.json, rows_to_json(rows))
    if args.check and any(r.within_target(rows[0]) is False for r in rows[1:]):
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
