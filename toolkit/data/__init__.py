"""Labelled datasets, feature stores, (distributed) extraction into them, and what a DATA argument becomes.
Imports: encoder, models, config, errors, identity, runtime, fsio (Lightning only in distributed.py).
"""
