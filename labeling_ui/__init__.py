"""The human side of the pipeline: the ranking database (store), the Gradio app (app), agreement
statistics, export snapshots in the reward stage's format, and simulated annotators for the tiny world."""
