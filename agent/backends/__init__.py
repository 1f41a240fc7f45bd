"""Inference backends: each loads one model and can generate text and score answer choices."""

from agent.backends.base import Backend, ChoiceScores, Generation

__all__ = ["Backend", "ChoiceScores", "Generation"]
