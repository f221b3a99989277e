"""Estimators that make heads (torch logreg, Lightning, Tip-Adapter, selection), train-probe and prompt evaluation.

Imports: heads, data, encoder, evaluation, config, errors.
"""
