"""The arms of the comparison: one registry entry each.

An :class:`Arm` is a model family (how its autoencoder and generator are built, trained and sampled), the
recipe that makes its configs from the data and the shared backbone, its sampler sweep, and how the
report names it. The harness, the run spec, the report and the bench iterate :data:`ARMS`; adding a
variant is one entry here (plus its model code), and nothing outside this module compares arm names.

Arms: ``var`` (VAR, Tian et al. 2024), ``flowar`` (FlowAR as released, Ren et al. 2025),
``flowar-mlp`` (FlowAR's recipe with MAR's per-token MLP head, Li et al. 2024) and, opt-in,
``flowar-fewstep`` (FlowAR's recipe with a shortcut head, Frans et al. 2025, 1-4 steps per scale), the
factor arms that walk from VAR to FlowAR one difference at a time (``var-flowae``, ``var-flowae-doubling``,
``var-doubling``, ``flowar-varsched``) and ``hart`` (HART's hybrid, Tang et al. 2025).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from functools import partial
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from crossfamily.hybrid import HybridConfig, HybridSampling, HybridVAR
from crossfamily.latent import LatentVQ, latent_vq_config, train_family as train_latent_family
from flowar.autoencoder import ContinuousAE
from flowar.model import FlowAR, FlowARConfig
from flowar.pipeline import flowar_paper_configs, train_family as train_flowar_family
from flowar.sampling import PAPER_GUIDANCE, PAPER_SAMPLING, PAPER_SOLVER, FlowSampling
from nextscale.autoencoder import CODERS, with_coder
from nextscale.config import config_as
from nextscale.cost import MemoryEstimate, memory_estimate
from nextscale.scales import default_schedule, doubling_schedule
from nextscale.stages import Trained
from var.model import VAR, VARConfig, VARSampling
from var.pipeline import default_configs as var_configs, train_family as train_var_family
from var.tokenizer import MultiScaleVQVAE


def backbone_inputs(bb, n: int, dev) -> torch.Tensor:
    """Random teacher-forcing inputs for ``n`` images: every scale after the first, the backbone's in_dim."""
    return torch.randn(n, bb.cfg.seq_len - bb.cfg.first_len, bb.cfg.in_dim, device=dev)


def _var_teacher_forced(model, y, dev):
    """Backbone over the whole pyramid, then the linear head to logits (random inputs)."""
    bb = model.backbone
    x_in = backbone_inputs(bb, len(y), dev)
    return lambda: model.head(bb(x_in, y))


def _flowar_teacher_forced(model, y, dev):
    """Backbone over the whole pyramid, then one velocity-head evaluation per scale at t = 0.5."""
    bb = model.backbone
    x_in = backbone_inputs(bb, len(y), dev)
    x_t = torch.randn(len(y), bb.cfg.seq_len, model.config.ae.latent_channels, device=dev)
    t = torch.full((1, 1), 0.5, device=dev)

    def fwd():
        h = bb(x_in, y)
        return [model.head(x_t[:, sl], t, h[:, sl], k) for k, sl in enumerate(bb.slices)]
    return fwd


def _flowar_head_alone(model, batch: int, dev):
    """One velocity evaluation at every scale on precomputed conditions (the sampler's mix of sizes)."""
    bb, head = model.backbone, model.head
    C, t = model.config.ae.latent_channels, torch.full((1, 1), 0.5, device=dev)
    with torch.no_grad():
        inputs = [(torch.randn(batch, s * s, C, device=dev), head.condition(
            torch.randn(batch, s * s, bb.cfg.width, device=dev), k), k) for k, s in enumerate(bb.cfg.schedule)]

    def run():
        for x, c, k in inputs:
            head.velocity(x, t, c, k)
    return run


@dataclass(frozen=True)
class Budget:
    """A family's training steps, (autoencoder, generator): ``default`` and ``quick`` (``--quick``'s); families
    that train alike share one. Each is an entry of ``CompareConfig.train_steps`` (``{name: {"autoencoder":
    n, "generator": n}}``) and two run-spec keys, ``train.<autoencoder>_steps`` and ``train.<name>_steps``,
    described by ``docs`` (what each stage trains); ``--train-steps N`` and a preset set every budget."""
    name: str
    autoencoder: str
    docs: tuple[str, str]
    default: tuple[int, int] = (300, 600)
    quick: tuple[int, int] = (40, 60)

    @property
    def keys(self) -> tuple[str, str]:
        """The run-spec keys of its two stages."""
        return f"{self.autoencoder}_steps", f"{self.name}_steps"


STAGES = ("autoencoder", "generator")  # the parts of a budget, in the order recipe() takes them


@dataclass(frozen=True, kw_only=True)
class Family:
    """What every arm of one model family shares: its autoencoder (named ``name``: families of one name
    share its checkpoint when their autoencoder configs agree), model classes, its ``train_family`` and
    training budget, the keywords every sampler row starts from, and the model's hot head evaluation
    (compiled, timed)."""
    name: str
    model: type[nn.Module]
    config: type                      # generator config: the fields an arm override may set
    sampling: type                    # sampling config: the fields a sampler row may set
    autoencoder: Callable[[Any], nn.Module]          # autoencoder config -> untrained autoencoder
    # (data, ae_cfg, gen_cfg, ae_train, gen_train, folder, device, names[, base_train=, base_name=]) -> Trained
    train: Callable[..., Trained]
    budget: Budget
    row_defaults: Callable[[Any], dict] = lambda cfg: {}   # CompareConfig -> keywords every row starts from
    own_sampler: Mapping[str, Any] = field(default_factory=dict)  # the paper's (the bench's steps replace "steps")
    head_eval: Callable[[nn.Module], Callable]       # model -> the head evaluation a sampling step calls (bound)
    teacher_forced: Callable[..., Callable]          # (model, y, dev) -> one teacher-forced forward (bench)
    decode: Callable[[nn.Module], Callable]          # model -> the final latent -> image decoder
    head_alone: Callable[..., Callable] | None = None  # (model, batch, dev) -> the head's evaluations alone
    reconstruct: Callable[[nn.Module], Callable]     # model -> images -> the autoencoder's reconstructions
    # The family whose trained autoencoder (``ae_cfg.frozen_ae``, its checkpoint shared) this family's
    # autoencoder is built on; ``train`` then takes its recipe as ``base_train=``. None: trained from scratch.
    base: "Family | None" = None

    def build(self, ae_cfg, gen_cfg):
        return self.model(gen_cfg, self.autoencoder(ae_cfg))


def _flowar_guidance(cfg) -> dict:
    """FlowAR's guidance at the run's strength (CompareConfig.flowar_cfg)."""
    return {"cfg_scale": cfg.flowar_cfg, **PAPER_GUIDANCE}


VAR_FAMILY = Family(name="var", model=VAR, config=VARConfig, sampling=VARSampling, autoencoder=MultiScaleVQVAE,
                    train=train_var_family, budget=Budget("var", "tokenizer", ("VAR's VQ tokenizer",
                                                                                "the VAR generator")),
                    head_eval=lambda model: model.head.forward, teacher_forced=_var_teacher_forced,
                    decode=lambda model: model.tokenizer.decode_latent, reconstruct=lambda model: model.reconstruct)
FLOWAR_FAMILY = Family(name="flowar", model=FlowAR, config=FlowARConfig, sampling=FlowSampling,
                       autoencoder=ContinuousAE, train=train_flowar_family,
                       budget=Budget("flowar", "ae", ("the FlowAR arms' shared autoencoder", "each FlowAR generator"),
                                     quick=(60, 120)),  # FlowAR's flow loss needs twice VAR's steps to learn
                       row_defaults=_flowar_guidance, own_sampler=PAPER_SAMPLING,
                       head_eval=lambda model: model.head.velocity, teacher_forced=_flowar_teacher_forced,
                       decode=lambda model: model.ae.decode, head_alone=_flowar_head_alone,
                       reconstruct=lambda model: model.ae.reconstruct)
# VAR's quantizer on FlowAR's frozen autoencoder, and HART's hybrid on the same tokenizer (one checkpoint);
# both train on VAR's budget.
LATENT_VAR_FAMILY = replace(VAR_FAMILY, name="var-latent", autoencoder=LatentVQ, train=train_latent_family,
                            base=FLOWAR_FAMILY)
HYBRID_FAMILY = replace(LATENT_VAR_FAMILY, model=HybridVAR, config=HybridConfig, sampling=HybridSampling,
                        train=partial(train_latent_family, model_cls=HybridVAR))


@dataclass(frozen=True)
class Arm:
    """One arm: a family, the recipe ``configs(data, backbone) -> (autoencoder config, generator config)``,
    its sampler sweep ((label, sampling keywords) rows; ``quick`` names the rows ``--quick`` keeps) and
    its report name and plot colour. ``default``: run unless ``--arms`` says otherwise."""
    name: str
    doc: str
    label: str
    color: str
    family: Family
    configs: Callable
    samplers: tuple
    quick: tuple[str, ...]
    default: bool = True

    def __post_init__(self):
        labels = [lbl for lbl, _ in self.samplers]
        if len(set(labels)) != len(labels) or not set(self.quick) <= set(labels):
            raise ValueError(f"arm {self.name}: sampler labels must be distinct and quick rows among them")


def _on_schedule(configs, schedule):
    """A recipe on another schedule of the same latent side (``schedule(latent side) -> sides``): the
    generator's backbone and, where it has one per scale (VAR's tokenizer), its autoencoder. FlowAR's
    autoencoder does not depend on the schedule, so its arms keep sharing one checkpoint."""
    def make(data, backbone):
        bb = replace(backbone, schedule=schedule(backbone.schedule[-1]))
        ae, gen = configs(data, bb)
        if isinstance(gen, FlowARConfig):  # flowar_paper_configs imposes the doubling schedule: undo it
            gen = replace(gen, backbone=bb)
        return ae, gen
    return make


def _on_flowar_latent(gen_type=VARConfig):
    """VAR's recipe (tokenizer settings, generator config as ``gen_type``) with its quantizer on the
    latent of FlowAR's autoencoder, the one the FlowAR arms train (so all share that checkpoint)."""
    def make(data, backbone):
        vq, gen = var_configs(data, backbone)
        ae, _ = flowar_paper_configs(data, backbone)  # FlowAR's autoencoder does not depend on the schedule
        return latent_vq_config(ae, vq), config_as(gen_type, gen)
    return make


def _with(configs, **gen_fields):
    """A recipe with generator-config fields replaced."""
    def make(data, backbone):
        ae, gen = configs(data, backbone)
        return ae, replace(gen, **gen_fields)
    return make


# VAR: CFG strength and top-k/top-p.
VAR_SAMPLERS = (
    ("cfg 0", dict(cfg_scale=0.0)),
    ("cfg 1.5", dict(cfg_scale=1.5)),
    ("cfg 3", dict(cfg_scale=3.0)),
    ("cfg 1.5, top-k 64, top-p 0.95", dict(cfg_scale=1.5, top_k=64, top_p=0.95)),
)
# HART's hybrid: VAR's rows (its residual flow takes 8 Euler steps, HART's count), then fewer and more steps.
HYBRID_SAMPLERS = VAR_SAMPLERS[:3] + (
    ("cfg 1.5, residual x2", dict(cfg_scale=1.5, residual_steps=2)),
    ("cfg 1.5, residual x24", dict(cfg_scale=1.5, residual_steps=24)),
)
# FlowAR: solver and steps per scale; "euler x24" is FlowAR's own sampler (the release's 25-point
# two-segment grid). Every row starts from FlowAR's guidance at CompareConfig.flowar_cfg.
FLOWAR_SAMPLERS = (
    ("euler x1", dict(solver="euler", steps=1)),
    ("euler x2", dict(solver="euler", steps=2)),
    ("euler x4", dict(solver="euler", steps=4)),
    ("euler x8", dict(solver="euler", steps=8)),
    ("euler x24", PAPER_SOLVER),
    ("euler_maruyama x8", dict(solver="euler_maruyama", steps=8)),
    ("euler_maruyama x24", {**PAPER_SOLVER, "solver": "euler_maruyama"}),
)
# The shortcut head: 1, 2, 4 steps per scale at guidance w = 0.5 (a few large steps keep less
# diversity than the flow at FlowAR's w = 1; the README's few-step table), the same at FlowAR's w, and
# the same model's flow (d = 0) under FlowAR's own sampler.
FEWSTEP_SAMPLERS = (
    ("shortcut x1, w 0.5", dict(solver="shortcut", steps=1, cfg_scale=0.5)),
    ("shortcut x2, w 0.5", dict(solver="shortcut", steps=2, cfg_scale=0.5)),
    ("shortcut x4, w 0.5", dict(solver="shortcut", steps=4, cfg_scale=0.5)),
    ("shortcut x1", dict(solver="shortcut", steps=1)),
    ("shortcut x2", dict(solver="shortcut", steps=2)),
    ("euler x24", PAPER_SOLVER),
)

# name -> Arm. Everything iterates this dict when it runs, so an entry added later (a test's arm, a
# user's variant) is a full arm too; DEFAULT_ARMS is the built-in default run.
ARMS: dict[str, Arm] = {a.name: a for a in (
    Arm("var", "VAR (Tian et al. 2024): VQ tokenizer, next-scale token prediction", "VAR", "tab:blue",
        VAR_FAMILY, var_configs, VAR_SAMPLERS, ("cfg 0", "cfg 1.5")),
    Arm("flowar", "FlowAR as released (Ren et al. 2025): transformer flow-matching head, doubling schedule, "
        "two-segment Euler", "FlowAR", "tab:orange", FLOWAR_FAMILY, flowar_paper_configs, FLOWAR_SAMPLERS,
        ("euler x2", "euler_maruyama x8")),
    Arm("flowar-mlp", "FlowAR's recipe with MAR's per-token MLP head", "FlowAR, MLP head", "tab:green",
        FLOWAR_FAMILY, partial(flowar_paper_configs, head="mlp"), FLOWAR_SAMPLERS, ("euler x2", "euler_maruyama x8")),
    Arm("flowar-fewstep", "FlowAR's recipe with a shortcut head, sampled in 1, 2 or 4 steps per scale",
        "FlowAR, shortcut head", "tab:red", FLOWAR_FAMILY, _with(flowar_paper_configs, few_step="shortcut"),
        FEWSTEP_SAMPLERS, ("shortcut x1, w 0.5", "shortcut x2, w 0.5"), default=False),
    # One factor at a time (the schedule): each published arm on the other's schedule, all else equal.
    Arm("var-doubling", "VAR on FlowAR's doubling schedule (its tokenizer quantizes at those scales)",
        "VAR, doubling schedule", "tab:cyan", VAR_FAMILY, _on_schedule(var_configs, doubling_schedule),
        VAR_SAMPLERS, ("cfg 0", "cfg 1.5"), default=False),
    Arm("flowar-varsched", "FlowAR as released on VAR's schedule (1, 2, 3, 4, 6, 8, ...)", "FlowAR, VAR's schedule",
        "tab:brown", FLOWAR_FAMILY, _on_schedule(flowar_paper_configs, default_schedule), FLOWAR_SAMPLERS,
        ("euler x2", "euler_maruyama x8"), default=False),
    # One factor at a time (the latent): VAR's quantizer and head on FlowAR's autoencoder, on VAR's schedule
    # and on FlowAR's; the second differs from FlowAR in the head alone (discrete vs flow).
    Arm("var-flowae", "VAR on FlowAR's autoencoder: its quantizer trained on that frozen latent, decoded by "
        "that decoder", "VAR, FlowAR's autoencoder", "tab:purple", LATENT_VAR_FAMILY, _on_flowar_latent(),
        VAR_SAMPLERS, ("cfg 0", "cfg 1.5"), default=False),
    Arm("var-flowae-doubling", "VAR on FlowAR's autoencoder and doubling schedule: FlowAR but for the discrete "
        "head", "VAR, FlowAR's autoencoder and schedule", "tab:pink", LATENT_VAR_FAMILY,
        _on_schedule(_on_flowar_latent(), doubling_schedule), VAR_SAMPLERS, ("cfg 0", "cfg 1.5"), default=False),
    # Between discrete and continuous: HART's tokens + a per-token flow head for the residual they leave.
    Arm("hart", "HART (Tang et al. 2025): VAR on FlowAR's autoencoder plus a per-token flow head drawing the "
        "continuous residual the tokens leave", "HART hybrid", "tab:olive", HYBRID_FAMILY,
        _on_flowar_latent(HybridConfig), HYBRID_SAMPLERS, ("cfg 0", "cfg 1.5"), default=False),
)}
DEFAULT_ARMS = tuple(name for name, a in ARMS.items() if a.default)
# The factors VAR and FlowAR differ in, each as two arms that differ in it alone: (factor, arm A, arm B),
# read as A - B at each arm's best row (report.md's attribution section). CHAIN walks from VAR to FlowAR
# one factor per step (latent, schedule, head), so its three differences add up to the total.
TOTAL = ("var", "flowar")  # the difference the factors explain: the two methods as published
CHAIN = ("var", "var-flowae", "var-flowae-doubling", "flowar")
FACTORS = tuple(zip(("latent: VAR's tokenizer - FlowAR's autoencoder", "schedule on FlowAR's latent: VAR's - doubling",
                     "head on FlowAR's latent and schedule: discrete - flow"), CHAIN, CHAIN[1:])) + (
    ("schedule, discrete head: VAR's - doubling", "var", "var-doubling"),
    ("schedule, flow head: VAR's - doubling", "flowar-varsched", "flowar"),
    ("flow head: transformer - MLP", "flowar", "flowar-mlp"),
    ("continuous residual: HART - its tokens alone", "hart", "var-flowae"),
)
# Named sets of arms (--design): "attribution" is the chain and the hybrid; the other factor arms
# (var-doubling, flowar-varsched, flowar-mlp) join with --arms.
DESIGNS = {"published": DEFAULT_ARMS, "attribution": CHAIN + ("hart",)}
# The arm whose best row every other arm's rows are matched against (in head NFE and ms/img) in the
# paired comparisons: the discrete-token baseline.
ANCHOR = "var"


def budgets() -> dict[str, Budget]:
    """name -> Budget of every family the arms train (and the families theirs are built on), in the order
    of :data:`ARMS`; read when called, so an arm added later brings its family's budget."""
    out = {}
    for arm in ARMS.values():
        for fam in (arm.family, arm.family.base):
            if fam is not None:
                out.setdefault(fam.budget.name, fam.budget)
    return out


def steps_of(cfg, family: Family) -> tuple[int, int]:
    """The run's (autoencoder, generator) training steps of ``family``."""
    steps = cfg.train_steps[family.budget.name]
    return steps["autoencoder"], steps["generator"]


def arm_configs(name: str, data, backbone, cfg):
    """(autoencoder config, generator config) of arm ``name`` for ``data`` on ``backbone`` with the run's
    coder family (``CODERS[cfg.coder]``), ``head_width`` (where the generator has one) and
    ``cfg.arm_overrides[name]`` applied; raises ``ValueError`` on a bad combination or an unknown override
    field."""
    arm = ARMS[name]
    ae_cfg, gen_cfg = (with_coder(c, CODERS[cfg.coder]) for c in arm.configs(data, backbone))
    names = {f.name for f in fields(gen_cfg)}
    if cfg.head_width is not None and "head_width" in names:
        gen_cfg = replace(gen_cfg, head_width=cfg.head_width)
    over = (cfg.arm_overrides or {}).get(name) or {}
    for key in over:
        if key not in names:
            raise ValueError(f"arm_overrides.{name}: unknown field {key!r}; fields: {', '.join(sorted(names))}")
    return ae_cfg, (replace(gen_cfg, **over) if over else gen_cfg)


def arms_memory(cfg, data, backbone) -> MemoryEstimate:
    """The largest of the run's arms' memory estimates (:func:`nextscale.cost.memory_estimate` of each arm's
    configs at the run's largest training batch and its largest sampling batch: the metrics', the timed
    cost's or the throughput's), each refused (``ValueError`` naming the arm) where it cannot fit, before
    any model is built."""
    batch = max(("batch_size", "ae_batch_size"), key=lambda k: getattr(cfg, k))
    sample = max(("sample_batch", "cost_batch", "throughput_batch"), key=lambda k: getattr(cfg, k))
    estimates = []
    for name in cfg.arms:
        try:
            estimates.append(memory_estimate(arm_configs(name, data, backbone, cfg), getattr(cfg, batch),
                                             getattr(cfg, sample), batch, sample).check())
        except ValueError as e:
            raise ValueError(f"arm {name}: {e}") from None
    return max(estimates, key=lambda m: m.total)


def build_arm(name: str, ae_cfg, gen_cfg):
    """An untrained model of arm ``name`` from its configs (see :func:`arm_configs`)."""
    return ARMS[name].family.build(ae_cfg, gen_cfg)


def sampler_rows(name: str, cfg) -> list[tuple[str, dict]]:
    """The (label, sampling keywords) rows arm ``name`` is sampled with: the run's own sweep for the arm
    when it has one, else the arm's built-in sweep (``--quick``: its quick rows), each starting from the
    family's row defaults."""
    if cfg.samplers and name in cfg.samplers:
        return [(lbl, dict(kw)) for lbl, kw in cfg.samplers[name]]
    arm = ARMS[name]
    base = arm.family.row_defaults(cfg)
    return [(lbl, {**base, **kw}) for lbl, kw in arm.samplers if not cfg.quick or lbl in arm.quick]
