"""The method: Gen-SSD's chunk-selection loop (selection.py), its knobs (config.py), the
baselines (baselines.py), threshold calibration (calibration.py) and one entry point for all
methods (registry.py).
"""
