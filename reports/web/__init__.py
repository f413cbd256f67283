"""The HTTP side: JSON API, server-rendered dashboard pages, metrics and health, behind authentication.

reports.web.api: create_app(settings, engine), run_api(settings); reports.web.server: start_api(settings, engine).
Nothing is imported here, so a worker that only stores masks (reports.web.keyimage) does not load the web stack."""
