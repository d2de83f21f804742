"""Tasks that plug into the training engine (weightformer.engine): each brings its data, model, loss and metrics."""
