"""The paper's sweeps, each a list of runner cells of `probe segment` fits (cells): seeds, efficiency, variants,
robustness."""
