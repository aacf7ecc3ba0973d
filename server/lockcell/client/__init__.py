"""The Python client library for lockcell cells."""
