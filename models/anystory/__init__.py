"""AnyStory (FLUX.1-dev): checkpoint loader, low-rank deltas, embedders and reference preprocessing."""
