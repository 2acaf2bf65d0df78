"""The loop: label feedback, performance per window, triggered retraining, gated promotion, rollback."""
