"""Metrics, reports and plots (the only matplotlib user).

Imports: config, errors, fsio.
"""
