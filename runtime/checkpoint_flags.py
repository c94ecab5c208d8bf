"""The three flags of every command that loads a .pth checkpoint (python -m export, runtime.infer,
yolact_torch.eval, yolact_torch.train): --class-names, --input-size, --config-file.

Declared here, once, because runtime.infer takes them and the runtime imports nothing from yolact_torch/.
Their values pass through as given; yolact_torch.user_options reads and checks them when the checkpoint
is loaded (in the torch backend, lazily). An exported model carries its names and size: these
flags are for checkpoints only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

FLAG_DESTS = ('class_names', 'input_size', 'config_file')


def add_checkpoint_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('checkpoints trained elsewhere (e.g. with dbolya/yolact on your own data)')
    group.add_argument('--class-names', metavar='NAMES',
                       help='the classes, in training order: "cat,dog", a JSON list, or a file with one name a '
                            'line (or a JSON list); as many as the weights predict (default: the checkpoint\'s, '
                            'else class_1..class_N)')
    group.add_argument('--input-size', type=int, metavar='N',
                       help='the network\'s input side in pixels, the original config\'s max_size '
                            '(default: the config\'s, e.g. 550)')
    group.add_argument('--config-file', type=Path, metavar='FILE',
                       help='JSON or YAML with fields of the original config (name, backbone.selected_layers/'
                            'pred_scales/pred_aspect_ratios, num_classes, max_size, class_names, mask_dim, '
                            'nms_top_k, nms_conf_thresh, nms_thresh, max_num_detections), applied over the base '
                            'config the file name implies')


def checkpoint_flags(args: argparse.Namespace) -> dict:
    """The flags that were given, as keyword arguments of yolact_torch.checkpoint.load_model (and the torch
    backend): only those given, so a command without them passes nothing."""
    return {name: getattr(args, name) for name in FLAG_DESTS if getattr(args, name) is not None}
