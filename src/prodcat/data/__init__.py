"""Data: the task's layout (dataset), the category tree, product texts, tokens and folds."""
