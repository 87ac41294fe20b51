"""The HTTP service (`./run.sh serve`): saved models loaded once, products categorised over HTTP.

By concern: `app` (the FastAPI application and its life cycle), `routes` (the endpoints), `schemas` (every
request and response body, typed for /openapi.json), `loading` (the models in memory: loaded at start-up
and swapped whole on reload), `answers` (products of a request -> the Predictor -> the response),
`problems` (every failure a client can cause as one application/problem+json answer), `limits` (the body
size limit, counted as bytes stream in), `photos` (photos of a request, decoded under a pixel limit),
`security` (the API key of the write endpoints), `observe` (one log line and the Prometheus metrics per
request), `info` (what the saved models say about themselves), `server` (uvicorn: workers, signals).
"""
