"""The web: data views, bearer-token authentication, /health readiness and the live page."""
