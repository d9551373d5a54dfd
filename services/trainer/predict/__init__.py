"""Prediction: features, chunked top-k, MUGE evaluation, ensembles.

Import the submodules directly (``services.trainer.predict.topk`` ...); evaluation needs
neither torch nor a model, so this package imports nothing itself.
"""
from __future__ import annotations
