"""Figures: run summaries and fit reports."""
