"""Command-line tools around the model: demo, packaging, serving, clients."""
