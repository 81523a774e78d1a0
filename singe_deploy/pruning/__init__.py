"""Dependency groups, the plan per step, latency targets and channel alignment, and the entwined loop."""
