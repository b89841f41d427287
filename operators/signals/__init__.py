"""From features to intentions: regimes, strategies, their weights, sizing and ATR stops."""
