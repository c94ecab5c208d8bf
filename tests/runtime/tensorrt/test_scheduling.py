"""Stream scheduling order and CUDA graph policy of the TensorRT backend's throughput mode."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.tensorrt.scheduling import CAPTURE, EAGER, REPLAY, GraphPolicy, pipelined
from tests.runtime.tensorrt.test_lanes import make_backend, sim  # noqa: F401 (sim is a fixture)


def run(num_items, num_lanes):
    """pipelined over recording lanes: returns (results, event log)."""
    log = []
    busy = set()

    def submit(lane, item):
        assert lane not in busy, f'lane {lane} got item {item} before its previous one was collected'
        busy.add(lane)
        log.append(('submit', lane, item))
        return item * 10

    def collect(lane, handle):
        busy.discard(lane)
        log.append(('collect', lane, handle // 10))
        return handle + 1

    results = list(pipelined(range(num_items), list(range(num_lanes)), submit, collect))
    return results, log


def test_three_lanes_overlap_and_keep_order():
    results, log = run(5, 3)
    assert results == [1, 11, 21, 31, 41]
    assert log == [
        ('submit', 0, 0), ('submit', 1, 1), ('submit', 2, 2),
        ('collect', 0, 0), ('submit', 0, 3),
        ('collect', 1, 1), ('submit', 1, 4),
        ('collect', 2, 2), ('collect', 0, 3), ('collect', 1, 4),
    ]


def test_one_lane_is_sequential():
    _, log = run(3, 1)
    assert log == [('submit', 0, 0), ('collect', 0, 0), ('submit', 0, 1), ('collect', 0, 1),
                   ('submit', 0, 2), ('collect', 0, 2)]


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 20), st.integers(1, 5))
def test_any_shape_in_flight_bounded_round_robin(num_items, num_lanes):
    results, log = run(num_items, num_lanes)
    assert results == [10 * i + 1 for i in range(num_items)]
    in_flight = 0
    for event, lane, item in log:
        in_flight += 1 if event == 'submit' else -1
        assert 0 <= in_flight <= num_lanes
        assert lane == item % num_lanes
    assert [item for event, _, item in log if event == 'collect'] == list(range(num_items))


def test_lazy_and_needs_a_lane():
    submitted = []
    results = pipelined(iter(range(100)), [0, 1], lambda lane, i: submitted.append(i) or i, lambda lane, h: h)
    assert next(results) == 0
    assert submitted == [0, 1, 2]  # item 2 is submitted after item 0 was collected and handed out
    with pytest.raises(ValueError, match='lane'):
        list(pipelined([1], [], None, None))


def test_graph_captured_after_a_warm_run_then_replayed():
    policy = GraphPolicy(enabled=True)
    assert policy.next(8) == (EAGER, True)
    assert policy.next(8) == (CAPTURE, False)
    policy.captured(True)
    assert policy.next(8) == (REPLAY, False)
    assert policy.next(8) == (REPLAY, False)
    # a partial last batch: new shape, graph dropped, eager
    assert policy.next(3) == (EAGER, True)
    assert not policy.has_graph
    assert policy.next(8) == (EAGER, True)
    assert policy.next(8) == (CAPTURE, False)


def test_failed_capture_is_not_retried_for_that_size():
    policy = GraphPolicy(enabled=True)
    policy.next(4)
    assert policy.next(4) == (CAPTURE, False)
    policy.captured(False)
    assert [policy.next(4) for _ in range(3)] == [(EAGER, False)] * 3
    policy.next(2)
    assert policy.next(2) == (CAPTURE, False)  # another size may still capture
    policy.next(4)
    assert policy.next(4) == (EAGER, False)


def test_moved_buffers_drop_the_graph_and_need_a_new_warm_run():
    policy = GraphPolicy(enabled=True)
    policy.next(1)
    policy.next(1)
    policy.captured(True)
    policy.buffers_changed()
    assert policy.next(1) == (EAGER, False)
    assert policy.next(1) == (CAPTURE, False)


def test_disabled_policy_is_always_eager():
    policy = GraphPolicy(enabled=False)
    assert [policy.next(2) for _ in range(3)] == [(EAGER, True), (EAGER, False), (EAGER, False)]


def test_predict_batches_equals_predict_batch_by_batch(sim):  # noqa: F811
    """Through detect_batches (3 lanes of the simulated TensorRT backend) and through plain detect
    (a backend without it), the Detections equal runtime.pipeline.predict's, batch by batch."""
    from runtime.pipeline import predict
    from runtime.pipeline import predict_batches

    rng = np.random.default_rng(6)
    frames = [rng.integers(0, 256, (12, 10, 3), dtype=np.uint8) for _ in range(7)]
    frame_batches = [frames[i:i + 2] for i in range(0, len(frames), 2)]
    backend = make_backend(sim, streams=3, max_batch=2)
    expected = [predict(backend, batch, score_threshold=0.1) for batch in frame_batches]

    class WithoutStreams:  # only what predict_batches may use of a Backend
        metadata, detect = backend.metadata, backend.detect

    for runner in (backend, WithoutStreams()):
        executions = sim.executions
        results = list(predict_batches(runner, iter(frame_batches), score_threshold=0.1))
        assert sim.executions - executions == len(frame_batches)
        assert [images for images, _ in results] == frame_batches
        for (_, got), want in zip(results, expected):
            assert len(got) == len(want)
            for g, w in zip(got, want):
                np.testing.assert_array_equal(g.boxes, w.boxes)
                np.testing.assert_array_equal(g.masks, w.masks)
                np.testing.assert_array_equal(g.classes, w.classes)
                assert g.image_size == (12, 10)
    backend.close()
