"""runtime.artifacts: the one naming rule every stage writes and reads its default files by."""

from runtime.artifacts import engine_path, export_path, postprocess_only_path, precision_path


def test_export_names_follow_the_checkpoint_and_the_options():
    checkpoint = 'runtime/assets/yolact_tiny_shapes.pth'
    assert export_path(checkpoint).as_posix() == 'build/yolact_tiny_shapes.onnx'
    assert export_path('yolact_base_54_800000.pth', postprocess=False).as_posix() == 'build/yolact_base_54_800000.raw.onnx'
    assert export_path(checkpoint, cross_class=True).as_posix() == 'build/yolact_tiny_shapes.cross_class.onnx'


def test_precision_variants_lie_beside_the_fp32_model():
    assert precision_path('build/a.onnx', 'fp16').as_posix() == 'build/a.fp16.onnx'
    assert precision_path('build/a.fp32.onnx', 'int8').as_posix() == 'build/a.int8.onnx'
    assert precision_path('x/a.raw.onnx', 'int8', 'onnxruntime').as_posix() == 'x/a.raw.int8-ort.onnx'


def test_engines_lie_beside_their_onnx_and_a_checkpoint_names_its_default_export():
    assert engine_path('build/a.onnx').as_posix() == 'build/a.engine'
    assert engine_path('x/y.cross_class.int8.onnx').as_posix() == 'x/y.cross_class.int8.engine'
    assert engine_path('runtime/assets/yolact_tiny_shapes.pth').as_posix() == 'build/yolact_tiny_shapes.engine'


def test_the_post_processing_alone_lies_beside_the_raw_export():
    assert postprocess_only_path('build/a.raw.onnx').as_posix() == 'build/a.postprocess.onnx'
    assert postprocess_only_path('x/a.cross_class.raw.onnx').as_posix() == 'x/a.cross_class.postprocess.onnx'
