"""Features out of a backbone: the activation store (store), the pixel sampler (sampler), the export (export),
massive-activation channels (massive)."""
