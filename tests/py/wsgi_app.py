"""A WSGI application for gunicorn: GET /SIZE/TAG answers SIZE bytes of TAG repeated, as
tests/js/http_server.js does (tests/py/check_clients.py `http` checks them)."""


def app(environ, start_response):
    parts = environ.get("PATH_INFO", "").split("/")
    try:
        size, tag = int(parts[1]), parts[2]
    except (IndexError, ValueError):
        start_response("400 Bad Request", [("Content-Type", "text/plain")])
        return [b"bad request\n"]
    body = (tag.encode() * (size // max(len(tag), 1) + 1))[:size]
    start_response(
        "200 OK",
        [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))],
    )
    return [body]
