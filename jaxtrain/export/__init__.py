"""Base-model handoff: Hugging Face export and import."""
