"""Prompt tuning: the metrics a spec declares (`optimize:`), and the codec fidelity score."""
