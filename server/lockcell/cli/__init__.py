"""The lockcell command-line interface."""
