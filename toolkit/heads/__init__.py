"""The head contract (base.py: read it before adding a head type), zero-shot heads and prompts, linear and cache
heads, calibration. Imports: config, errors, identity, fsio, labels (numpy only; no training code, no open_clip).
"""
