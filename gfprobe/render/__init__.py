"""Rendering: analysis results to rich tables, JSON, CSV and Markdown. No analysis here."""
