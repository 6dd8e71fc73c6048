"""Procedurally generated images and multi-image questions: SynthBench and the synth-vlm training data."""
