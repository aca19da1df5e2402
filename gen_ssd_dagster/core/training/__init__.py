"""Supervised fine-tuning on (question, solution) pairs, loss on the solution only.
"""
