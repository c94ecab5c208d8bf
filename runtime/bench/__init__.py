"""Benchmarks of the runtime (`make bench`, python -m runtime.bench): cpu.py times torch eager and
onnxruntime per stage and draws the table, precision.py adds the FP16/INT8 onnxruntime rows,
tensorrt.py the TensorRT engines' rows on a GPU host."""
