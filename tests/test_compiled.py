"""Opt-in torch.compile: same numbers as eager, a clear refusal where it cannot run, eager fallback.

Inductor itself is exercised on a tiny network (its C++ compile of ENet takes
about 100 s on 2 cores: that is measured by ``napari-sizeloss bench --compile``,
not here); ENet and the trainer/CLI wiring go through ``aot_eager``, which
traces the same graphs (dynamo and AOT autograd) without generating C++.
"""

import dataclasses
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import napari_sizeloss.compiled as compiled
from napari_sizeloss.bounds import SizeBounds
from napari_sizeloss.cli import main
from napari_sizeloss.compiled import (
    CompiledForward,
    CompileFallbackWarning,
    CompileUnavailable,
    compile_unavailable_reason,
    require_compile,
)
from napari_sizeloss.network import ENet, PReLU
from napari_sizeloss.reproduce import ReproduceConfig
from napari_sizeloss.trainer import TrainConfig, train

from test_trainer import disc_volume


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), PReLU(4),
        nn.Conv2d(4, 2, 1),
    )
    with torch.no_grad():
        net[2].weight.copy_(torch.tensor([0.25, -0.5, 1.5, 0.0]))
    return net


def grads_of(model: nn.Module, forward, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = forward(x)
    (out.square().mean() + out[:, 1].sum() * 1e-3).backward()
    return out.detach().clone(), [p.grad.clone() for p in model.parameters()]


def test_inductor_step_matches_eager_on_a_small_network():
    if compile_unavailable_reason("cpu"):
        pytest.skip(compile_unavailable_reason("cpu"))
    eager, twin = tiny_net().train(), tiny_net().train()
    x = torch.randn(2, 1, 16, 12, generator=torch.Generator().manual_seed(1))
    out_e, grads_e = grads_of(eager, eager, x)
    fwd = CompiledForward(twin)
    out_c, grads_c = grads_of(twin, fwd, x)
    assert fwd.compiled and fwd.backend == "inductor"
    assert torch.allclose(out_c, out_e, atol=1e-5)
    for gc, ge in zip(grads_c, grads_e):
        assert torch.allclose(gc, ge, atol=1e-5, rtol=1e-4)
    # batch-norm running statistics move the same way in both
    assert torch.allclose(twin[1].running_mean, eager[1].running_mean, atol=1e-6)


def test_prelu_hands_compile_torchs_operator():
    """Under compile our PReLU is torch's (fusable) op, not the custom autograd function."""
    seen: list[str] = []

    def recording_backend(gm, inputs):
        seen.extend(str(node.target) for node in gm.graph.nodes)
        return gm.forward

    net = tiny_net().train()
    x = torch.randn(1, 1, 8, 8)
    fwd = CompiledForward(net, backend=recording_backend)
    out, grads = grads_of(net, fwd, x)
    assert fwd.compiled
    assert any("prelu" in target for target in seen), seen
    assert not any("autograd_function" in target or "PReLUFunction" in target for target in seen), seen
    ref_out, ref_grads = grads_of(net, net, x)  # eager: our autograd function
    assert torch.allclose(out, ref_out, atol=1e-6)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-6)


def test_enet_traces_whole_and_matches_eager():
    eager = ENet().eval()
    twin = ENet().eval()
    twin.load_state_dict(eager.state_dict())
    x = torch.randn(2, 1, 40, 36)  # sides not multiples of 8: padding and cropping traced too
    fwd = CompiledForward(twin, backend="aot_eager")
    with torch.no_grad():
        assert torch.allclose(fwd(x), eager(x), atol=1e-5)
    assert fwd.compiled


def test_a_failing_compile_falls_back_to_eager_once():
    def broken_backend(gm, inputs):
        raise RuntimeError("no compiler today\nsecond line")

    net = tiny_net().eval()
    fwd = CompiledForward(net, backend=broken_backend)
    x = torch.randn(1, 1, 8, 8)
    with pytest.warns(CompileFallbackWarning, match="no compiler today"):
        out = fwd(x)
    assert not fwd.compiled and "no compiler today" in fwd.failure and "second line" not in fwd.failure
    with torch.no_grad():
        assert torch.equal(out.detach(), net(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fwd(x)  # eager from now on: no second warning
    assert fwd.calls == 2


def test_an_input_error_is_not_mistaken_for_a_compile_failure():
    fwd = CompiledForward(tiny_net().eval(), backend="aot_eager")
    with pytest.raises(RuntimeError):
        fwd(torch.randn(1, 3, 8, 8))  # 3 channels into a 1-channel convolution: eager fails too
    assert fwd.compiled  # not switched off by the user's bad input


def test_unavailable_reasons(monkeypatch):
    monkeypatch.setattr(compiled, "_cpp_compiler", lambda: None)
    reason = compile_unavailable_reason("cpu")
    assert reason and "C++ compiler" in reason and "\n" not in reason
    with pytest.raises(CompileUnavailable, match="C\\+\\+ compiler"):
        require_compile("cpu")
    monkeypatch.setattr(compiled, "_cpp_compiler", lambda: "g++")
    assert compile_unavailable_reason("cpu") is None
    require_compile(torch.device("cpu"))
    assert "mps" in compile_unavailable_reason("mps")
    monkeypatch.setattr(compiled.importlib.util, "find_spec", lambda name: None)
    assert "Triton" in compile_unavailable_reason("cuda")


def test_compiled_training_session_follows_the_eager_one(monkeypatch):
    monkeypatch.setattr(compiled, "DEFAULT_BACKEND", "aot_eager")
    image, seeds, _ = disc_volume()
    config = dict(steps=4, batch_size=2, crop=32, device="cpu", preview_every=0, seed=0)
    # compiled training on the CPU is contiguous, like the plain eager path; the channels-last fast
    # path computes the same step (tests/test_bench.py) but rounds differently, which Adam amplifies
    eager = train(image, seeds, SizeBounds(20, 300), config=TrainConfig.interactive(amp=False, **config))
    comp = train(image, seeds, SizeBounds(20, 300), config=TrainConfig.interactive(compile=True, **config))
    assert isinstance(comp._compiled, CompiledForward) and comp._compiled.compiled
    from napari_sizeloss.device import is_channels_last

    assert not is_channels_last(comp.model)  # the graphs compile_ahead's child makes are contiguous
    assert comp._compiled.calls == 4 and eager._compiled is None and eager._training_forward() is eager.model
    losses_e = [e.loss for e in eager.history[:-1]]
    losses_c = [e.loss for e in comp.history[:-1]]
    np.testing.assert_allclose(losses_c, losses_e, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(comp.probabilities(), eager.probabilities(), atol=1e-4)


def test_training_session_refuses_compile_where_it_cannot_run(monkeypatch):
    monkeypatch.setattr(compiled, "_cpp_compiler", lambda: None)
    image, seeds, _ = disc_volume()
    with pytest.raises(CompileUnavailable):
        train(image, seeds, SizeBounds(20, 300), config=TrainConfig.interactive(compile=True, steps=1, device="cpu"))


def test_cli_train_compile_refusal_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(compiled, "_cpp_compiler", lambda: None)
    d = tmp_path
    image, gt, seeds = d / "cine.nii.gz", d / "gt.nii.gz", d / "seeds.nii.gz"
    assert main(["phantom", str(image), "--gt", str(gt), "--shape", "48", "40", "3", "2"]) == 0
    assert main(["clicks", str(gt), "--out", str(seeds), "--frames", "0"]) == 0
    capsys.readouterr()
    model = d / "m.ckpt"
    code = main(["train", str(image), "--seeds", str(seeds), "--bounds", "5", "400", "--model", str(model),
                 "--steps", "1", "--device", "cpu", "--compile"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "C++ compiler" in err[0] and err[0].startswith("error: ")
    assert not model.exists()


def test_reproduce_compile_is_a_setting_not_a_result():
    plain, fast = ReproduceConfig(), ReproduceConfig(compile=True)
    assert fast.fingerprint() == plain.fingerprint()  # resuming mixes compiled and eager runs of one setting


def test_compiled_prediction_pads_the_last_batch_to_one_shape(monkeypatch):
    from napari_sizeloss.inference import fold_batch_norms
    from napari_sizeloss.trainer import predict_volume

    shapes: list[tuple] = []

    def recording_backend(gm, inputs):
        shapes.append(tuple(inputs[0].shape) if inputs else ())
        return gm.forward

    torch.manual_seed(0)
    model = ENet().eval()
    image = np.random.default_rng(0).random((40, 36, 3, 4), dtype=np.float32)  # 12 slices, batches of 5
    fwd = CompiledForward(fold_batch_norms(model), backend=recording_backend)
    got = predict_volume(model, image, normalisation="auto", batch_size=5, forward=fwd)
    want = predict_volume(model, image, normalisation="auto", batch_size=5)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert fwd.compiled and fwd.calls == 3
    assert len(shapes) == 1  # 5, 5 and 2 slices padded to 5: compiled once


def test_predictor_compile(monkeypatch, tmp_path):
    from napari_sizeloss.trainer import Predictor

    monkeypatch.setattr(compiled, "DEFAULT_BACKEND", "aot_eager")
    torch.manual_seed(0)
    model = ENet().eval()
    image = np.random.default_rng(1).random((32, 40, 2, 3), dtype=np.float32)
    plain = Predictor(model=model, device=torch.device("cpu"))
    fast = Predictor(model=model, device=torch.device("cpu"), compile=True)
    np.testing.assert_allclose(fast.probabilities(image, box=None), plain.probabilities(image, box=None), atol=1e-5)
    assert fast._compiled.compiled and fast._compiled.calls >= 1
    monkeypatch.setattr(compiled, "_cpp_compiler", lambda: None)
    with pytest.raises(CompileUnavailable):
        Predictor(model=model, device=torch.device("cpu"), compile=True)


def test_compiling_tunes_the_allocator_in_a_fresh_process():
    import json
    import subprocess
    import sys

    code = (
        "import json, torch\n"
        "from napari_sizeloss.allocator import allocator_tuned\n"
        "from napari_sizeloss.compiled import CompiledForward\n"
        "before = allocator_tuned()\n"
        "CompiledForward(torch.nn.Linear(2, 2), backend='eager')\n"
        "print(json.dumps([before, allocator_tuned()]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    before, after = json.loads(out.stdout.strip().splitlines()[-1])
    assert before is None
    assert after is True or (after is False and not sys.platform.startswith("linux"))


def test_reproduce_compile_refusal_comes_before_any_output(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(compiled, "_cpp_compiler", lambda: None)
    out = tmp_path / "results"
    code = main(["reproduce", "--budget", "quick", "--methods", "ce", "--device", "cpu", "--compile", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "C++ compiler" in err[0]
    assert not out.exists()


def test_a_compiler_inductor_cannot_use_is_reported_before_any_work():
    import torch._inductor.config as inductor_config

    with inductor_config.patch({"cpp.cxx": (None, "/nonexistent/c++")}):  # as $CXX=/nonexistent/c++ would
        reason = compile_unavailable_reason("cpu")
    assert reason and "C++ compiler" in reason  # not masked by a g++ elsewhere on the PATH


def test_cli_prints_our_warnings_as_one_line():
    from napari_sizeloss.cli import _format_warning

    ours = _format_warning(CompileFallbackWarning("torch.compile failed (X: y); continuing"), CompileFallbackWarning,
                           "/somewhere/trainer.py", 543, "logits = self._forward(x)")
    assert ours == "warning: torch.compile failed (X: y); continuing\n"
    theirs = _format_warning(UserWarning("other"), UserWarning, "/somewhere/lib.py", 7, "x = 1")
    assert "lib.py:7" in theirs and "UserWarning" in theirs  # others keep Python's format


def test_compile_can_be_switched_on_between_rounds(monkeypatch):
    """The widget changes a session's config between rounds: the next round compiles, then keeps its graph."""
    monkeypatch.setattr(compiled, "DEFAULT_BACKEND", "aot_eager")
    image, seeds, _ = disc_volume()
    session = train(image, seeds, SizeBounds(20, 300), config=TrainConfig.interactive(
        steps=2, batch_size=2, crop=32, device="cpu", preview_every=0))
    assert session._compiled is None
    session.config = dataclasses.replace(session.config, compile=True)
    list(session.run())
    wrapper = session._compiled
    assert isinstance(wrapper, CompiledForward) and wrapper.compiled and wrapper.calls == 2
    list(session.run())
    assert session._compiled is wrapper and wrapper.calls == 4
    session.config = dataclasses.replace(session.config, compile=False)
    list(session.run())
    assert wrapper.calls == 4  # eager again


# ----------------------------------------------------------- compile ahead
class TinyConfigNet(nn.Module):
    """A small network rebuildable from ``config`` (as ENet), for the child process of compile_ahead."""

    def __init__(self, width: int = 3) -> None:
        super().__init__()
        self._config = {"width": width}
        self.body = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), PReLU(width),
                                  nn.Conv2d(width, 2, 1))

    @property
    def config(self) -> dict:
        return dict(self._config)

    def forward(self, x):
        return self.body(x)


def test_compile_ahead_fills_the_cache_that_this_process_then_loads(tmp_path, monkeypatch):
    if compile_unavailable_reason("cpu"):
        pytest.skip(compile_unavailable_reason("cpu"))
    from torch._dynamo.utils import counters

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    model = TinyConfigNet(width=5).train()
    seconds = compiled.compile_ahead(model, (2, 1, 12, 16))
    assert seconds > 0 and any((tmp_path / "inductor").rglob("*.py"))
    assert compiled.compile_ahead(model, (2, 1, 12, 16)) == 0.0  # marker: not compiled ahead twice
    counters.clear()
    forward = CompiledForward(model)
    forward(torch.rand(2, 1, 12, 16)).sum().backward()
    assert forward.compiled
    # forward and backward graphs come from the child's cache; nothing generated here
    assert counters["inductor"]["fxgraph_cache_hit"] >= 2
    assert counters["inductor"]["fxgraph_cache_miss"] == 0


def test_compile_ahead_is_refused_in_one_line_where_it_cannot_work(monkeypatch):
    with pytest.raises(compiled.CompileAheadError, match="no config"):
        compiled.compile_ahead(tiny_net(), (1, 1, 8, 8))
    with pytest.raises(compiled.CompileAheadError, match="by name"):
        compiled.compile_ahead(TinyConfigNet(), (1, 1, 8, 8), backend=lambda gm, inputs: gm)
    odd = TinyConfigNet()
    odd._config = {"width": object()}
    with pytest.raises(compiled.CompileAheadError, match="cannot be passed"):
        compiled.compile_ahead(odd, (1, 1, 8, 8))
    with pytest.raises(compiled.CompileAheadError) as err:
        compiled.compile_ahead(TinyConfigNet(), (1, 1, 8, 8), backend="no_such_backend")
    message = str(err.value)
    assert "child process failed" in message and "no_such_backend" in message and "\n" not in message


def test_compile_ahead_cancel_kills_the_child():
    polls = []

    def cancel() -> bool:
        polls.append(1)
        return True

    assert compiled.compile_ahead(TinyConfigNet(), (1, 1, 8, 8), backend="aot_eager", cancel=cancel) is None
    assert len(polls) == 1


def _ahead_session(monkeypatch, fake, **config):
    monkeypatch.setattr(compiled, "DEFAULT_BACKEND", "eager")  # dynamo only: the wiring, in seconds
    monkeypatch.setattr(compiled, "compile_ahead", fake)
    image, seeds, _ = disc_volume()
    base = dict(steps=2, batch_size=2, crop=32, device="cpu", preview_every=0, compile=True, compile_ahead=True)
    base.update(config)
    from napari_sizeloss.trainer import TrainingSession

    return TrainingSession(image, seeds, SizeBounds(20, 300), config=TrainConfig.interactive(**base))


def test_a_session_compiles_each_new_batch_shape_ahead_once(monkeypatch):
    calls = []
    session = _ahead_session(monkeypatch, lambda model, shape, **kw: calls.append((model, shape, kw)) or 1.0)
    list(session.run())
    assert len(calls) == 1
    model, shape, kw = calls[0]
    assert model is session.model and shape == (2, 1, *session.roi.shape) and kw["backend"] == "eager"
    assert session._compiled.shapes == {shape}  # the steps then ran with exactly that shape
    list(session.run())
    assert len(calls) == 1  # this shape is compiled in-process already
    session.config = dataclasses.replace(session.config, batch_size=3)
    list(session.run())
    assert [c[1][0] for c in calls] == [2, 3]


def test_stop_during_compile_ahead_ends_the_round_without_a_step(monkeypatch):
    import threading
    import time

    def slow_child(model, shape, cancel, **kw):
        deadline = time.monotonic() + 30
        while not cancel():
            assert time.monotonic() < deadline, "cancel never came"
            time.sleep(0.01)
        return None

    session = _ahead_session(monkeypatch, slow_child)
    threading.Timer(0.2, session.stop).start()
    events = list(session.run())
    assert len(events) == 1 and events[0].stopped and events[0].step == 0
    assert session._compiled.calls == 0  # nothing compiled in this process


def test_a_failed_compile_ahead_warns_and_trains_anyway(monkeypatch):
    def failing(model, shape, **kw):
        raise compiled.CompileAheadError("compiling in a child process failed: boom")

    session = _ahead_session(monkeypatch, failing)
    with pytest.warns(RuntimeWarning, match="boom; compiling in this process instead"):
        events = list(session.run())
    assert events[-1].step == 2 and not events[-1].stopped and session._compiled.calls == 2


def test_compile_ahead_child_exits_when_its_parent_is_gone():
    """napari closed mid-compile: the child stops instead of compiling on for minutes."""
    import json
    import subprocess
    import sys

    spec = {"factory": "napari_sizeloss.network:ENet", "config": ENet().config, "shape": [2, 1, 32, 32],
            "training": True, "grad": True, "backend": "aot_eager", "threads": 1,
            "parent": 999_999_999}  # not this child's parent: as if its parent had died
    done = subprocess.run([sys.executable, "-m", "napari_sizeloss._compile_child", json.dumps(spec)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 3, done.stderr  # 0 would mean it compiled to the end


def test_compile_ahead_without_a_usable_interpreter_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(compiled.sys, "executable", str(tmp_path / "no-python"))
    with pytest.raises(compiled.CompileAheadError, match="cannot start a child Python"):
        compiled.compile_ahead(TinyConfigNet(), (1, 1, 8, 8), backend="aot_eager")


def test_collect_new_objects_only_scans_the_new_and_loses_nothing():
    import gc
    import weakref

    class Node:
        pass

    def cycle():
        a, b = Node(), Node()
        a.other, b.other = b, a
        return a

    old = cycle()
    old_ref = weakref.ref(old)
    gc.collect()
    with compiled.collect_new_objects_only():
        assert gc.get_freeze_count() > 0
        del old
        gc.collect()
        assert old_ref() is not None  # garbage from before waits: the collector does not scan it here
        new = cycle()
        new_ref = weakref.ref(new)
        del new
        gc.collect()
        assert new_ref() is None  # garbage made inside is collected inside
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert old_ref() is None  # and the earlier garbage after the block: nothing leaks


def test_a_session_loads_each_new_compiled_shape_with_collections_of_new_objects_only(monkeypatch):
    import contextlib

    entered = []

    @contextlib.contextmanager
    def recording():
        entered.append(1)
        yield

    monkeypatch.setattr(compiled, "collect_new_objects_only", recording)
    session = _ahead_session(monkeypatch, lambda model, shape, **kw: 1.0, steps=3)
    list(session.run())
    assert len(entered) == 1  # the first step (compiles or loads), not the two after it
    list(session.run())
    assert len(entered) == 1
    session.config = dataclasses.replace(session.config, compile_ahead=False, batch_size=3)
    list(session.run())
    assert len(entered) == 1  # only with compile_ahead (the widget's way)
