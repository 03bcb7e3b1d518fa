import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from nextscale.checkpoint import load_checkpoint
from nextscale.data import load_digits
from nextscale.train import TrainConfig, load_trained, lr_at, train
from launch import torchrun
from toy import Toy, ToyConfig

WORKER_ENV = {"PYTHONPATH": str(Path(__file__).parent)}  # ddp_worker.py imports toy.py

TINY = TrainConfig(steps=12, batch_size=32, lr=3e-3, warmup_steps=3, progress=False)


@pytest.fixture(scope="module")
def d8():
    return load_digits(side=8)


def fresh(seed=0):
    torch.manual_seed(seed)
    return Toy()


def run(d, cfg=TINY, **kw):
    return train(fresh(), d.x_train, d.y_train, cfg, device="cpu", **kw)


@pytest.mark.parametrize("field, value", [("steps", -1), ("batch_size", 0), ("lr", 0.0), ("beta2", 1.0),
                                          ("grad_clip", -1.0), ("ema_decay", 1.0), ("min_lr_ratio", 2.0)])
def test_config_validation(field, value):
    with pytest.raises(ValueError, match=field):
        replace(TINY, **{field: value})


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lr_at(100, cfg) == pytest.approx(0.1) and lr_at(55, cfg) == pytest.approx(0.55)


def test_loss_goes_down_on_real_digits(d8):
    res = run(d8, replace(TINY, steps=60))
    first, last = sum(res.losses[:5]) / 5, sum(res.losses[-5:]) / 5
    assert last < 0.5 * first, (first, last)


def test_same_seed_same_curve_other_seed_other_curve(d8):
    cfg = replace(TINY, steps=6)
    assert run(d8, cfg).losses == run(d8, cfg).losses
    assert run(d8, cfg).losses != run(d8, replace(cfg, seed=1)).losses


def test_stochastic_model_is_reproducible(d8):
    """Label dropout draws from the RNG the loop reseeds every step: same seed, same curve."""
    cfg_m = ToyConfig(backbone=replace(ToyConfig().backbone, class_dropout=0.5, dropout=0.1))
    curves = []
    for _ in range(2):
        torch.manual_seed(0)
        curves.append(train(Toy(cfg_m), d8.x_train, d8.y_train, replace(TINY, steps=5), device="cpu").losses)
    assert curves[0] == curves[1]


def test_resume_from_an_interrupted_run_matches_uninterrupted(d8, tmp_path):
    cfg = replace(TINY, steps=10, ema_decay=0.9, ckpt_every=4)
    full = run(d8, cfg)
    ck = tmp_path / "run.pt"

    class Stop(Exception):
        pass

    calls = {"n": 0}

    class Crashy(Toy):
        def forward(self, x, y):
            calls["n"] += 1
            if calls["n"] == 7:  # dies during step 6, after the checkpoint at step 4
                raise Stop
            return super().forward(x, y)

    torch.manual_seed(0)
    with pytest.raises(Stop):
        train(Crashy(), d8.x_train, d8.y_train, cfg, ckpt_path=ck, device="cpu")
    assert load_checkpoint(ck)["step"] == 4
    resumed = run(d8, cfg, ckpt_path=ck)
    assert resumed.steps_run == 6
    assert resumed.losses == full.losses
    for a, b in zip(resumed.ema.parameters(), full.ema.parameters()):
        assert torch.equal(a, b)


def test_finished_checkpoint_is_reused_and_loads_safely(d8, tmp_path):
    ck = tmp_path / "m.pt"
    first = run(d8, ckpt_path=ck)
    again = run(d8, ckpt_path=ck)
    assert again.steps_run == 0 and again.losses == first.losses
    for a, b in zip(first.model.parameters(), again.model.parameters()):
        assert torch.equal(a, b)
    raw = torch.load(ck, weights_only=True)  # plain data only: a stranger's file cannot run code
    assert raw["library_version"] and raw["config"]["backbone"]["schedule"] == [1, 2, 4, 8]
    loaded = load_trained(Toy(), ck)
    x = d8.x_test[:4]
    assert torch.equal(loaded(x, d8.y_test[:4])["loss"], first.model(x, d8.y_test[:4])["loss"])


def test_checkpoint_of_another_config_or_truncated_raises(d8, tmp_path):
    ck = tmp_path / "m.pt"
    run(d8, ckpt_path=ck)
    other = Toy(ToyConfig(backbone=replace(ToyConfig().backbone, width=16)))
    with pytest.raises(ValueError, match="different model config.*width"):
        load_trained(other, ck)
    with pytest.raises(ValueError, match="different training config.*lr"):
        run(d8, replace(TINY, lr=1e-2), ckpt_path=ck)
    data = ck.read_bytes()
    ck.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt, truncated"):
        load_trained(Toy(), ck)


def test_every_bad_checkpoint_is_a_value_error_naming_the_file(d8, tmp_path, monkeypatch):
    import nextscale
    from nextscale import checkpoint

    ck = tmp_path / "m.pt"
    run(d8, ckpt_path=ck)
    good = torch.load(ck, weights_only=True)
    with pytest.raises(ValueError, match=f"checkpoint path {tmp_path} is a folder"):
        load_trained(Toy(), tmp_path)
    # another major.minor version is refused; a patch release loads
    major, minor = (int(p) for p in nextscale.__version__.split(".")[:2])
    for version, ok in ((f"{major}.{minor}.7", True), (f"{major}.{minor + 1}.0", False), (None, False)):
        checkpoint.save_checkpoint(ck, {k: v for k, v in good.items() if k not in ("format", "library_version")})
        raw = torch.load(ck, weights_only=True)
        raw["library_version"] = version
        torch.save(raw, ck)
        if ok:
            load_trained(Toy(), ck)
        else:
            with pytest.raises(ValueError, match=f"written by nextscale {version}, this is {nextscale.__version__}"):
                load_trained(Toy(), ck)
    # a missing entry, renamed parameters
    for drop in ("history", "config"):
        torch.save({k: v for k, v in good.items() if k != drop}, ck)
        with pytest.raises(ValueError, match=rf"{ck.name} lacks \['{drop}'\]"):
            run(d8, ckpt_path=ck)
    renamed = dict(good)
    renamed["model"] = {k.replace("backbone.", "trunk."): v for k, v in good["model"].items()}
    torch.save(renamed, ck)
    with pytest.raises(ValueError, match=rf"{ck.name} does not fit Toy: missing \['backbone"):
        run(d8, ckpt_path=ck)


def test_changing_steps_is_a_new_run_not_a_resume(d8, tmp_path):
    """The cosine schedule depends on ``steps``: a 4-step checkpoint continued to 8 steps would not
    equal a fresh 8-step run, so it is refused (the commands key checkpoints by steps)."""
    from nextscale.checkpoint import keyed_path

    ck = tmp_path / "m.pt"
    run(d8, replace(TINY, steps=4), ckpt_path=ck)
    with pytest.raises(ValueError, match="different training config.*steps: checkpoint 4 vs current 8"):
        run(d8, replace(TINY, steps=8), ckpt_path=ck)
    # the commands' keyed paths give 8 steps its own file: a fresh run, equal to training 8 steps from scratch
    k4, k8 = (keyed_path(tmp_path, "m", replace(TINY, steps=s)) for s in (4, 8))
    assert k4 != k8
    assert run(d8, replace(TINY, steps=8), ckpt_path=k8).losses == run(d8, replace(TINY, steps=8)).losses


def test_a_write_killed_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    from nextscale import checkpoint

    ck = tmp_path / "m.pt"
    checkpoint.save_checkpoint(ck, {"step": 1, "w": torch.ones(3)})

    def dying_save(obj, f):
        f.write(b"partial bytes")
        raise KeyboardInterrupt("killed while writing")
    monkeypatch.setattr(checkpoint.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(ck, {"step": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    back = checkpoint.load_checkpoint(ck)
    assert back["step"] == 1 and torch.equal(back["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temp file left behind


class Exploding(Toy):
    def forward(self, x, y):
        out = super().forward(x, y)
        if self.backbone.pos_emb.grad is not None and self._n >= 5:
            out["loss"] = out["loss"] * float("nan")
        self._n += 1
        return out

    _n = 0


def test_nan_loss_stops_with_step_and_keeps_last_checkpoint(d8, tmp_path):
    ck = tmp_path / "m.pt"
    cfg = replace(TINY, steps=10, ckpt_every=4)
    torch.manual_seed(0)
    with pytest.raises(FloatingPointError, match="at step 5"):
        train(Exploding(), d8.x_train, d8.y_train, cfg, ckpt_path=ck, device="cpu")
    ok = load_checkpoint(ck)
    assert ok["step"] == 4 and all(math.isfinite(h["loss"]) for h in ok["history"])


class Recording(Toy):
    """Records a copy of its output layer's weight at every forward (= the weights before that step)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, y):
        self.seen.append(self.out.weight.detach().clone())
        return super().forward(x, y)


def test_ema_is_the_closed_form_average_of_the_weight_sequence(d8):
    """e_0 = w_0, e_t = d e_(t-1) + (1 - d) w_t: checked against the weights the model really had (a
    no-op or wrong-weight EMA update fails)."""
    d = 0.7
    torch.manual_seed(0)
    m = Recording()
    res = train(m, d8.x_train, d8.y_train, replace(TINY, ema_decay=d), device="cpu")
    ws = m.seen + [res.model.out.weight.detach()]          # w_0 .. w_n
    e = ws[0]
    for w in ws[1:]:
        e = d * e + (1 - d) * w
    assert torch.allclose(res.ema.out.weight, e, atol=1e-6) and not torch.allclose(e, ws[-1], atol=1e-4)
    assert res.best is res.ema and not any(p.requires_grad for p in res.ema.parameters())


def test_gradients_are_clipped_to_grad_clip(d8, monkeypatch):
    """At every optimizer step the global gradient norm is at most grad_clip (the logged grad_norm is
    the norm before clipping, and it is larger)."""
    seen = []
    real_step = torch.optim.AdamW.step

    def step(self, *a, **kw):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
        return real_step(self, *a, **kw)
    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    res = run(d8, replace(TINY, grad_clip=0.05))
    assert len(seen) == TINY.steps and max(seen) <= 0.05 * (1 + 1e-4), seen
    assert all(h["grad_norm"] > 0.05 for h in res.history)
    seen.clear()
    run(d8, replace(TINY, grad_clip=0.0))
    assert max(seen) > 0.05


def test_bad_training_inputs(d8):
    with pytest.raises(ValueError, match="as many labels"):
        train(fresh(), d8.x_train[:5], d8.y_train[:4], TINY, device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for CUDA where there is none")
def test_asking_for_missing_cuda_is_a_clear_error(d8):
    with pytest.raises(ValueError, match="device must be cpu on this machine, got 'cuda'"):
        train(fresh(), d8.x_train, d8.y_train, TINY, device="cuda")


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(d8, tmp_path):
    out = tmp_path / "ddp.json"
    torchrun([str(Path(__file__).parent / "ddp_worker.py"), str(out)], env=WORKER_ENV, timeout=300)
    import json
    two = json.loads(out.read_text())["losses"]
    torch.manual_seed(0)
    one = train(Toy(), d8.x_train, d8.y_train, TrainConfig(steps=8, batch_size=32, lr=3e-3, warmup_steps=2,
                                                           progress=False), device="cpu").losses
    assert len(two) == len(one) == 8
    for a, b in zip(one, two):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-6)
    assert two[-1] < two[0]


@pytest.mark.slow  # 10 s: two gloo processes
@pytest.mark.parametrize("kind", ["flowar", "flowar_cross"])
def test_two_process_ddp_trains_flowar_with_the_transformer_heads(tmp_path, kind):
    """FlowAR (transformer heads, FlowAR-S's and FlowAR-L/H's: several head calls per step, one per
    scale) trains under DDP: the loss falls and both ranks end with the same weights."""
    import json
    out = tmp_path / "ddp_flowar.json"
    torchrun([str(Path(__file__).parent / "ddp_worker.py"), str(out), kind], env=WORKER_ENV, timeout=300)
    res = json.loads(out.read_text())
    assert len(res["losses"]) == 8 and all(math.isfinite(v) for v in res["losses"])
    assert min(res["losses"][-3:]) < res["losses"][0]
    assert res["weights"][0] == res["weights"][1]


def test_override_replaces_steps_and_clips_warmup():
    cfg = TrainConfig(steps=100, warmup_steps=50, batch_size=64)
    assert cfg.override() == cfg
    short = cfg.override(steps=20, batch_size=8)
    assert (short.steps, short.warmup_steps, short.batch_size) == (20, 20, 8)
    with pytest.raises(ValueError, match="steps"):
        cfg.override(steps=-1)


def test_a_checkpoint_trained_on_other_data_is_refused(d8, tmp_path):
    """The checkpoint records the data it was trained on: copied under the right name for other data,
    it is neither resumed nor reused (it used to be, with exit 0 and a 3.5x worse reconstruction)."""
    cfg = replace(TINY, steps=3)
    ck = tmp_path / "m.pt"
    torch.manual_seed(0)
    train(Toy(), d8.x_train, d8.y_train, cfg, ckpt_path=ck, device="cpu")
    assert load_checkpoint(ck)["data"]
    torch.manual_seed(0)
    again = train(Toy(), d8.x_train, d8.y_train, cfg, ckpt_path=ck, device="cpu")
    assert again.steps_run == 0  # the same data: reused
    with pytest.raises(ValueError, match="was trained on other data"):
        train(Toy(), d8.x_train.flip(-1), d8.y_train, cfg, ckpt_path=ck, device="cpu")
