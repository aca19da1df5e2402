"""Where model weights run: the teacher and scorer interfaces (interfaces.py) and one module per
backend (transformers_backend.py, vllm_backend.py, openai_backend.py); what the backends share
(prefix_scoring.py, seeding.py, kv_batch.py); model loading and versions (models.py,
fingerprint.py); each model's prompt format (prompts.py).

The method imports interfaces.py only. A backend imports the shared modules, never a sibling
backend; vLLM and openai are imported by their own backend module alone.
"""
