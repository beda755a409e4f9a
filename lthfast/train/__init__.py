"""Training: schedules, the one loop, evaluation, checkpoints."""
