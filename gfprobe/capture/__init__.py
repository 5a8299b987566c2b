"""Framework-agnostic capture: a recorder that takes per-parameter statistics from any adapter."""
