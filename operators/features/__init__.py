"""Market features: bars, rolling statistics, entropy, VaR/ES, drift, correlations, event time."""
