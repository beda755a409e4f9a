"""Pruning masks: global magnitude pruning of conv and linear weights."""
