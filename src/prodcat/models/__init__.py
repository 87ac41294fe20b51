"""Base models: the contract (base), the bag of a model's children (bag), one module per model, nn/ for
the neural parts. Importing the package registers every model (prodcat.settings.register_model), in the
order they are listed and stacked in: a new model is its own module plus one line here."""
from prodcat.models import fasttext, tfidf, image, coca, id_neighbours, knn  # noqa: F401, I001 - registry order
