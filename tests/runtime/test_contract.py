"""runtime.contract.metadata_from_props: the one reader of the exported model's metadata entry."""

import pytest

from yolact_torch.config import get_config, metadata_from_config
from runtime.contract import METADATA_KEY, metadata_from_props
from runtime.metadata import MetadataError


def test_reads_back_what_the_exporter_stores():
    meta = metadata_from_config(get_config('yolact_base'), cross_class=True, max_dets=7)
    assert metadata_from_props({METADATA_KEY: meta.to_json(), 'other': 'x'}, 'm.onnx') == meta


def test_missing_or_malformed_entries_name_the_file_and_the_fix():
    with pytest.raises(MetadataError, match=r"m.onnx has no 'yolact.metadata'.*python -m export"):
        metadata_from_props({}, 'm.onnx')
    with pytest.raises(MetadataError, match='make export'):
        metadata_from_props({'unrelated': '1'}, 'm.onnx', fix='run make export')
    with pytest.raises(MetadataError, match='m.onnx: not valid JSON'):
        metadata_from_props({METADATA_KEY: '{"config": 1'}, 'm.onnx')
