"""The training path: the loop, its set-up, state dict, schedule, signals, progress, history, log, validation and losses."""
