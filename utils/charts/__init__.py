"""Charts of the history as PNG files."""
