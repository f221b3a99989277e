"""Estimators that make heads (fewshot.py: one per method; torch logreg, Lightning, Tip-Adapter, selection),
train-probe as fit -> calibrate -> evaluate, prompt evaluation. Imports: heads, data, encoder, evaluation, below.
"""
