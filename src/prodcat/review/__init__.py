"""Review and learn: the queue of products for a person to decide and the append-only record of the
decisions (`store`), filled from predictions (`queue`), exported as training rows."""
