"""Benchmarks as `Problem` records, answer extraction and grading, and where a solution ends.
"""
