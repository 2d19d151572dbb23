"""Exports checked against the eager model, and exported files run as classifiers."""
