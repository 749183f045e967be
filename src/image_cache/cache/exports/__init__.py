"""ML dataset export: labels and splits (labels.py), the selection (select.py), the dataset card
(card.py), file helpers (files.py), one module per format, and the registry of formats (registry.py)."""
