"""Classifier service: text classification with dynamic batching across concurrent requests."""
