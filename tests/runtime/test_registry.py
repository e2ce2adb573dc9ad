"""The backend registry: one list that parity, bench and the CLI use; a backend is one registration."""
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import defmamba_deploy as dd
from shared_inputs import BAD_BATCHES
from defmamba_deploy.bench import run_bench
from defmamba_deploy.cli import app
from defmamba_deploy.parity import run_parity
from defmamba_deploy.runtime.base import Runner, check_image_batch
from defmamba_deploy.runtime.registry import (Backend, BackendRequest, Unavailable, backend_names, get_backend,
                                              register_backend, unregister_backend)


class ScaledTorchRunner(Runner):
    """A throwaway backend defined here alone: PyTorch's logits times a factor (1 = a faithful copy)."""

    backend = "scaled-torch"

    def __init__(self, request: BackendRequest, factor: float) -> None:
        super().__init__()
        self.request, self.factor, self.calls = request, factor, 0
        self.output_names = ["logits"]

    def activate_impl(self) -> None:
        self.net = dd.create_model(self.request.model, self.request.weights, seed=0)

    def infer_impl(self, x):
        self.calls += 1
        with torch.inference_mode():
            return [self.net(torch.from_numpy(x)).numpy() * self.factor]


@pytest.fixture
def throwaway():
    made = []

    def register(factor: float, name: str = "scaled-torch"):
        def create(request):
            made.append(ScaledTorchRunner(request, factor))
            return made[-1]

        register_backend(Backend(name, "test-only backend", create), replace=True)
        return made

    yield register
    unregister_backend("scaled-torch")


def test_builtins_in_order():
    assert backend_names()[:4] == ("torch", "ort", "ort-portable", "trt")
    assert get_backend("trt").file_kind == "engine" and get_backend("ort-portable").portable
    with pytest.raises(dd.UsageError, match="unknown backend 'nope': choose from torch, ort"):
        get_backend("nope")
    with pytest.raises(ValueError, match="registered already"):
        register_backend(Backend("torch", "again", lambda r: None))


def test_throwaway_backend_in_parity_and_bench(throwaway):
    made = throwaway(1.0)
    report = run_parity("t", backends=["torch", "scaled-torch"], samples=1, images=None, img_size=(40, 40),
                        batches=(1, 2))
    rows = [r for r in report.rows if r.backend == "scaled-torch"]
    assert report.passed and [r.batch for r in rows] == [1, 2] and made[0].calls > 0
    bench = run_bench("t", backends=["scaled-torch"], batches=[1], sizes=[(40, 40)], iters=2, seconds=None, warmup=0)
    assert [(r.backend, r.batch) for r in bench.results] == [("scaled-torch", 1)]
    r = CliRunner().invoke(app, ["backends"])
    assert r.exit_code == 0 and "scaled-torch" in r.output and "test-only backend" in r.output


def test_a_wrong_backend_fails_parity(throwaway):
    throwaway(1.01)  # 1 % off: parity must see it (so the test above can fail)
    report = run_parity("t", backends=["scaled-torch"], samples=1, images=None, img_size=(40, 40), batches=(1,))
    assert not report.passed


def test_unavailable_is_a_skip_in_bench_and_an_error_in_parity():
    def create(request):
        raise Unavailable("needs a thing this machine lacks")

    register_backend(Backend("scaled-torch", "never here", create), replace=True)
    try:
        bench = run_bench("t", backends=["scaled-torch"], batches=[1], sizes=[(40, 40)], iters=1, seconds=None)
        assert bench.skipped == [{"backend": "scaled-torch", "precision": "fp32", "reason": "needs a thing this machine lacks"}]
        with pytest.raises(Unavailable, match="lacks"):
            run_parity("t", backends=["scaled-torch"], samples=1, images=None, img_size=(40, 40), batches=(1,))
    finally:
        unregister_backend("scaled-torch")


def test_precision_not_offered_is_a_skip():
    bench = run_bench("t", backends=["ort-portable"], batches=[1], sizes=[(40, 40)], precisions=["int8"], iters=1,
                      seconds=None)
    assert bench.results == [] and "not offered by the ort-portable backend" in bench.skipped[0]["reason"]


@pytest.mark.parametrize("x,match", BAD_BATCHES)
def test_every_runner_checks_input_the_same_way(x, match):
    with pytest.raises(dd.UsageError, match=match):
        check_image_batch(x)
    runner = get_backend("torch").create(BackendRequest("tiny"))
    with runner, pytest.raises(dd.UsageError, match=match):
        runner.infer(x)


def test_runner_lifecycle_and_timing():
    runner = get_backend("torch").create(BackendRequest("tiny"))
    assert not runner.is_active and runner.last_inference_time() is None
    with runner:
        assert runner.is_active
        out = runner.infer(np.zeros((2, 3, 40, 40), np.float32))
        assert out[0].shape == (2, 1000) and runner.last_inference_time() > 0
        assert runner.get_input_metadata() == {"input": ("float32", ["batch", 3, "height", "width"])}
    assert not runner.is_active
