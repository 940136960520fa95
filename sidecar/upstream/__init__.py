"""Upstream adapters for Complete: OpenAI-compatible, Azure OpenAI and the GitLab AI Gateway."""
