"""Scoring a model on a benchmark, and accuracy with 95% intervals (paired, clustered by question).
"""
