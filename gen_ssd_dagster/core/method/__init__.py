"""The method: Gen-SSD's chunk-selection loop (selection.py), its knobs (config.py), the
baselines (baselines.py), threshold calibration (calibration.py), the re-selection of Standard KD's samples
(reselection.py), the table of methods (methods.py, with their versions in versions.py) and one
entry point for all methods (registry.py).
"""
