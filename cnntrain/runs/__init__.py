"""Runs: a config built into data, network and optimizer; fit, resume, evaluate; the
training loop, checkpoints, the run folder, its metrics and stop signals."""
