"""Training-time optimization with tensorflow-model-optimization: QAT and pruning."""
