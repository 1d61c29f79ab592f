"""Optimisers: natural gradients for variational Gaussians, exponential families and torch
models; step-size schedules; safeguards. Each module re-exports its public names here."""

__all__: list[str] = []
