"""flowar: FlowAR (Ren et al., ICML 2025) on the shared scale-wise backbone: a continuous autoencoder,
flow-matching velocity heads (FlowAR's transformer, MAR's per-token MLP), and ODE (torchdiffeq) and
SDE solvers with exact NFE counting.

Time convention everywhere: t = 0 noise, t = 1 data (see ``flowar.solvers``)."""
from .autoencoder import AEConfig, ContinuousAE
from .model import FlowAR, FlowARConfig
from .pipeline import (PAPER_SAMPLING, default_configs, flowar_paper_configs,
                       flowar_release_configs, train_autoencoder, train_flowar)
from .solvers import SolverConfig, solve

__all__ = ["AEConfig", "ContinuousAE", "FlowAR", "FlowARConfig", "SolverConfig", "solve", "default_configs",
           "flowar_paper_configs", "flowar_release_configs", "PAPER_SAMPLING",
           "train_autoencoder", "train_flowar"]
