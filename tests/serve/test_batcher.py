"""Dynamic batching with a recording runner: merging, same-shape grouping, order, backpressure, drain."""
import threading
import time

import numpy as np
import pytest

from defmamba_deploy.errors import UsageError
from defmamba_deploy.serve.batcher import Batcher, QueueFull


class Recorder:
    """A runner whose output row i is the mean of input row i: each request can check it got its own rows."""

    def __init__(self, delay=0.0, gate=None):
        self.batches, self.delay, self.gate = [], delay, gate

    def infer(self, x):
        if self.gate is not None:
            self.gate.wait(10)
        self.batches.append(x.shape)
        time.sleep(self.delay)
        return [x.mean(axis=(1, 2, 3)).reshape(-1, 1), x[:, :1, :1, :1].reshape(-1, 1)]


def _x(value, n=1, hw=(4, 4)):
    return np.full((n, 3, *hw), value, np.float32)


def test_concurrent_requests_merge_and_each_gets_its_own_rows():
    gate = threading.Event()
    r = Recorder(gate=gate)
    b = Batcher([r], max_batch=8, max_delay_s=0.2)
    futs = [b.submit(_x(i)) for i in range(8)]
    gate.set()
    outs = [f.result(10) for f in futs]
    b.close(10)
    assert [float(o[0][0, 0]) for o in outs] == list(range(8))
    assert all(len(o) == 2 and o[0].shape == (1, 1) for o in outs)
    assert sum(s[0] for s in r.batches) == 8 and max(s[0] for s in r.batches) > 1  # merged


def test_only_same_shape_requests_merge_and_order_is_kept():
    gate = threading.Event()
    r = Recorder(gate=gate)
    b = Batcher([r], max_batch=8, max_delay_s=0.1)
    shapes = [(4, 4), (6, 6), (4, 4), (6, 6), (4, 4)]
    futs = [b.submit(_x(i, hw=hw)) for i, hw in enumerate(shapes)]
    gate.set()
    outs = [float(f.result(10)[0][0, 0]) for f in futs]
    b.close(10)
    assert outs == [0, 1, 2, 3, 4]
    assert sorted((s[2:], s[0]) for s in r.batches) == [((4, 4), 3), ((6, 6), 2)]  # one batch per shape


def test_max_batch_counts_images_not_requests():
    gate = threading.Event()
    r = Recorder(gate=gate)
    b = Batcher([r], max_batch=4, max_delay_s=0.1)
    futs = [b.submit(_x(i, n=3)) for i in range(3)]
    gate.set()
    outs = [f.result(10) for f in futs]
    b.close(10)
    assert [o[0].shape[0] for o in outs] == [3, 3, 3]
    assert all(s[0] <= 4 for s in r.batches)


def test_no_merging_for_a_static_batch_model():
    gate = threading.Event()
    r = Recorder(gate=gate)
    b = Batcher([r], max_batch=8, max_delay_s=0.1, merge=False)
    futs = [b.submit(_x(i)) for i in range(4)]
    gate.set()
    [f.result(10) for f in futs]
    b.close(10)
    assert [s[0] for s in r.batches] == [1, 1, 1, 1]


def test_a_full_queue_refuses_at_once_and_recovers():
    gate = threading.Event()
    b = Batcher([Recorder(gate=gate)], max_batch=1, max_delay_s=0, max_queue=2)
    first = b.submit(_x(0))
    time.sleep(0.2)  # the worker holds the first request (blocked in infer); two more fill the queue
    queued = [b.submit(_x(1)), b.submit(_x(2))]
    with pytest.raises(QueueFull, match="max-queue 2"):
        b.submit(_x(3))
    gate.set()
    assert [float(f.result(10)[0][0, 0]) for f in [first, *queued]] == [0, 1, 2]
    assert float(b.submit(_x(4)).result(10)[0][0, 0]) == 4  # serving again
    b.close(10)


def test_a_cancelled_request_is_dropped_and_runner_errors_reach_each_request():
    gate = threading.Event()
    r = Recorder(gate=gate)
    b = Batcher([r], max_batch=1, max_delay_s=0)
    first = b.submit(_x(0))
    time.sleep(0.2)
    dropped = b.submit(_x(1))
    assert dropped.cancel()
    gate.set()
    first.result(10)
    b.close(10)
    assert len(r.batches) == 1

    class Broken:
        def infer(self, x):
            raise UsageError("bad shape")

    b = Batcher([Broken()], max_batch=4, max_delay_s=0.05)
    futs = [b.submit(_x(i)) for i in range(3)]
    for f in futs:
        with pytest.raises(UsageError, match="bad shape"):
            f.result(10)
    b.close(10)


def test_close_finishes_what_is_queued_and_then_refuses():
    r = Recorder(delay=0.02)
    b = Batcher([r, Recorder(delay=0.02)], max_batch=2, max_delay_s=0.01)
    futs = [b.submit(_x(i)) for i in range(10)]
    b.close(10)
    assert all(f.done() and not f.cancelled() for f in futs)
    with pytest.raises(QueueFull, match="shutting down"):
        b.submit(_x(0))


@pytest.mark.parametrize("kw,needle", [({"max_batch": 0}, "max batch"), ({"max_delay_s": -1}, "max delay"),
                                       ({"max_queue": 1.5}, "max queue")])
def test_bad_settings_are_one_line(kw, needle):
    with pytest.raises(UsageError, match=needle):
        Batcher([Recorder()], **kw)
