"""Duo routing sidecar: routes GitLab Duo requests to the right AI model."""

__version__ = "0.1.0"
