"""Training: a typed `Run` (dataset, settings, workdir), the k-fold runner every base model plugs into,
the stacker's fit, the scores and reports of the OOF predictions, and the submission."""
