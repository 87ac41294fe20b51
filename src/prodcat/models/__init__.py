"""Base models: the contract and registry (base), the k-fold runner, one module per model, nn/ for the neural parts."""
