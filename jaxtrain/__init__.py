"""jaxtrain: a JAX/TPU pretraining stack, from raw text to a base model.

Importing this package has no side effects: no JAX backend is initialized and
nothing is registered globally, so notebooks can import the model definitions.
"""

__version__ = "0.1.0"
