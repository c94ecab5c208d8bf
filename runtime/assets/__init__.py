"""The files the package ships as data, so the demo works from a wheel installed anywhere: the demo
model (yolact_tiny trained on the synthetic shapes set; README "The demo model") with its COCO metrics,
its YOLACT++ counterpart (yolact_plus_tiny fine-tuned from it, `make train-demo-plus`) with its
metrics, and a sample image of the shapes validation split with all five classes."""

from pathlib import Path

ASSETS = Path(__file__).resolve().parent
DEMO_MODEL = ASSETS / 'yolact_tiny_shapes.pth'
DEMO_METRICS = ASSETS / 'yolact_tiny_shapes.metrics.json'
DEMO_PLUS_MODEL = ASSETS / 'yolact_plus_tiny_shapes.pth'
SAMPLE_IMAGE = ASSETS / 'sample.jpg'
