"""prodcat: predict the leaf category of a marketplace product in a category tree."""

__version__ = "0.1.0"
