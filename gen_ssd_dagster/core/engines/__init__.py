"""Where model weights run: the teacher and scorer interfaces and their transformers, vLLM and
OpenAI-server implementations, model loading, and each model's prompt format.
"""
