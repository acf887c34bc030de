"""Training code for the learned parts of ``correspondence`` (CNe outlier filter, RANSAC-Flow
fine network). Inference modules never import this package."""
