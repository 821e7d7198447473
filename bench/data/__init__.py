"""Datasets: manifests, TAU readers, audio decoding, the packed store and its loaders, the synthetic benchmark."""
