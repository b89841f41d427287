"""A local exchange to rehearse on: Binance's spot REST API (as ccxt's ``binance`` uses it) over
a matching engine fed by ticks, priced by the paper cost model.

``qbtc venue up|down|status|serve`` (:mod:`infra.exchange.daemon`) runs it;
:func:`infra.exchange.server.start_venue` starts it inside a process (tests).
"""
