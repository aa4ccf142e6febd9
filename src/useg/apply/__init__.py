"""Applying a trained model: predict, evaluate, which images are targets and supports, scores, sweep pictures."""
