"""Reference models for experiments: one file per model, each a builder returning the model,
its data and the settings used. Built only on natvi's public API."""
