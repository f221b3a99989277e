"""MLflow: the only mlflow user (adapter.py, logged_model.py); run records, store checks.

Imports: fitting, heads, evaluation, encoder, config, errors.
"""
