"""Ray Job entry points: ``ray job submit --working-dir . -- python -m pipelines.<stage> ...``."""
