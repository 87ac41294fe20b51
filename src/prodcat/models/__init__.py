"""Base models: the contract (base), the bag of a model's children (bag), one module per model, nn/ for
the neural parts."""
