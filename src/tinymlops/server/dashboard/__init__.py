"""The web dashboard: server-rendered HTML over the same services as the API, no scripts at all.

``sessions`` holds the login sessions (opaque tokens, server side, each with its CSRF token),
``forms`` reads form posts and checks their tokens; ``views`` and ``views_release`` turn service
data into what a page shows (small dataclasses, no HTML); ``pages`` and ``pages_release`` render it
as HTML (everything escaped), ``charts`` draws the SVG (stage progress, latency bars);
``static/`` holds the CSS. The routes are in :mod:`tinymlops.server.routers.dashboard`.
"""
