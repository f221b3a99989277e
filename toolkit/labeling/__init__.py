"""Labelling with a model's help: the labels.csv session (session.py), what to label next (suggest.py), the head
refitted as labels arrive (model.py), and the errors in labels: label issues, near-duplicates, outliers (audit.py).
The page lives in toolkit/serve/label_app.py, the commands in toolkit/cli/label.py."""
