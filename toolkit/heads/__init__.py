"""The head contract, zero-shot heads and prompts, linear and cache heads, calibration.

Imports: encoder (types only), models, config, errors, identity, fsio. No training code.
"""
