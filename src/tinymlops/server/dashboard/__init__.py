"""The read-only web dashboard: server-rendered HTML over the same services as the API.

``sessions`` holds the login sessions (opaque tokens, server side), ``views`` turns service data
into what a page shows, ``pages`` renders it as HTML (everything escaped), ``static/`` the CSS.
"""
