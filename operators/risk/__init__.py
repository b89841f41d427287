"""Risk: the engine's settings and checks, the portfolio and the portfolio QVaR."""
