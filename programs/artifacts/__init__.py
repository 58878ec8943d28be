"""A run's artifacts: the run folder and its manifest, reading them back, the figures and quality
metrics, the HTML report, and the export with a dataset card."""
