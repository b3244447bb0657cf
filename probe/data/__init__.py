"""Datasets: the folder layout of labelled image sets and the registry of the paper's six datasets."""
