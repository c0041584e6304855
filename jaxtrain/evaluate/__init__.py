"""Held-out evaluation, baselines and sampling."""
