"""Metrics (hF1, weighted F1, accuracy) and the review logic over OOF confidences (thresholds for a target
precision)."""
