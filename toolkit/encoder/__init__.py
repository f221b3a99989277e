"""The shared feature extractor (the one open_clip user besides models/), preprocessing, images, inputs, ONNX.

Imports: models, config, errors, identity, fsio.
"""
