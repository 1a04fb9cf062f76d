"""The human side of the pipeline: the ranking database, the Gradio app, simulated annotators for the
tiny world, and the export the reward stage reads. (The app lands with the labeling issue.)"""
