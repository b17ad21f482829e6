"""The web console: a build-free ES-module app served by the admin API itself (same origin, same auth).

``routes`` serves the page and its files and the console's session endpoints (cookie sign-in, refresh, sign-out,
first-run setup, the live event stream); ``session`` holds the cookie and CSRF rules; ``static/`` is the app.
Every screen reads and writes through the public ``/api/v1`` endpoints, so a console user can do exactly what
their role lets the API do, and nothing else.
"""
