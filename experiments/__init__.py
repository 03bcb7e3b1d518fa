"""Runnable experiments that turn the theory behind next-scale prediction into numbers (JSON + PNG).

    python -m experiments.attention_error --out runs/attention_error   # approximation error vs entry bound
    python -m experiments.attention_cost --out runs/attention_cost     # wall time and FLOPs vs latent side
    python -m experiments.universality --out runs/universality         # single-layer universality fits

Each takes ``--quick`` (a small run, used by the tests) and ``--seed``.
"""
