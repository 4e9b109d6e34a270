"""What a model directory is: class names, the config, manifest.json and engine records."""
