"""One method of analysis each: segment (and predict), grid, layers, kmeans, synthesize, deeplab."""
