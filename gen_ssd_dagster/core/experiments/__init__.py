"""Experiments over the method: the budget-matched comparison, its table, and the knob sweep.
"""
