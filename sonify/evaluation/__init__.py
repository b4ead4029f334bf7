"""Evaluation of an audio-to-image model: benchmark manifests, generation for them, the paper's and
its peers' metrics, and the pair-quality audit of a built dataset."""
