"""Labelled datasets, feature stores, and (distributed) extraction into them.

Imports: encoder, models, config, errors, identity, fsio.
"""
