"""The ASGI front: `StockadeMiddleware` runs the gateway's pipeline and routes in front of any ASGI app.

from stockade.asgi import StockadeMiddleware
app = StockadeMiddleware(app, config="stockade.yaml")
"""

from stockade.asgi.middleware import StockadeMiddleware

__all__ = ["StockadeMiddleware"]
