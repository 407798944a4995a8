"""Benchmarks behind ``ir-guidance bench ...``: each returns a flat dict of measured numbers.

Speed targets are ratios against a baseline measured in the same run, because the
machines these run on are shared and noisy.
"""
