"""Flax NNX model definitions. Independent of the run config system."""

from jaxtrain.models.transformer import ModelConfig, Transformer, count_params

__all__ = ["ModelConfig", "Transformer", "count_params"]
