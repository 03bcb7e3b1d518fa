"""flowar: FlowAR (Ren et al., ICML 2025) on the shared scale-wise backbone: a continuous autoencoder,
a flow-matching velocity head, and torchdiffeq ODE solvers with exact NFE counting.

Time convention everywhere: t = 0 noise, t = 1 data (see ``flowar.solvers``)."""
from .autoencoder import AEConfig, ContinuousAE
from .model import FlowAR, FlowARConfig
from .pipeline import default_configs, default_train_configs, train_autoencoder, train_flowar
from .solvers import SolverConfig, solve

__all__ = ["AEConfig", "ContinuousAE", "FlowAR", "FlowARConfig", "SolverConfig", "solve", "default_configs",
           "default_train_configs", "train_autoencoder", "train_flowar"]
