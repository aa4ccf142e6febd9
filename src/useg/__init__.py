"""useg: train UniverSeg on your own data, with checkpoints that never lose a run."""

__version__ = "0.1.0"
