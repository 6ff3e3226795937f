"""The HTTP API and the review page that `promptd run` serves on its own thread.

- ``app``: ``create_app(deps)``, the FastAPI application built from its collaborators.
- ``deps``: ``ServiceView`` (what the API reads from the running service) and ``ApiDeps``.
- ``runner``: uploads on a bounded pool of threads, ahead of the folder on the GPU lock.
- ``guard`` and ``policy``: the Host allow-list, the token, the Origin check, body limits.
- ``problems``: errors as HTTP answers; ``sse``: Server-Sent Events.
- ``routes_analyze``, ``routes_compat`` (A1111), ``routes_status``, ``routes_gallery``:
  the endpoints, in small groups; ``uploads`` reads what a request sends.
- ``gallery``, ``thumbs``, ``captions``: the inbox as the review page sees it, thumbnails
  made on the fly, caption edits and bulk find-and-replace.
- ``server``: uvicorn on a thread, stopped from the service's stop path; ``launch``: wires it
  into `promptd run`. ``static/``: the review page (plain HTML, CSS, JavaScript).

Sits above ``daemon.service``: may import anything below it (``service``, ``pipeline``,
``sidecar``, ``config``, ``fs``, ``records``, ``errors``); only ``daemon.cli`` and
``daemon.doctor`` import it.
"""
