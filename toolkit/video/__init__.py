"""ONE video pipeline: frames -> proba -> smoothed series -> segments, reps; the annotated copy.

Imports: predictor, heads, encoder, config, errors.
"""
