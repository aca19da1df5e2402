"""Gen-SSD: generation-time self-selection distillation."""
