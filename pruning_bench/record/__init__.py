"""The result format every driver writes (pruning and efficiency blocks, naming, notes, attention
files), and the one way files are written: atomically."""
