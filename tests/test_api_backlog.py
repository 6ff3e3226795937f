"""An upload goes ahead of the folder backlog: counted in model calls, never in seconds."""

from __future__ import annotations

from collections.abc import Callable

from daemon.service.worker import Worker
from tests.daemon_helpers import wait_until, write_images
from tests.fixtures_api import ApiWorld, png

MARK = "the upload in front of the backlog"


def _is_upload(body: dict[str, object]) -> bool:
    messages = body.get("messages") or []
    return isinstance(messages, list) and any(MARK in str(m.get("content")) for m in messages)


def test_upload_is_answered_ahead_of_a_300_image_folder_backlog(
    make_world: Callable[..., ApiWorld],
) -> None:
    """With 300 folder images queued, at most one folder model call starts between an
    upload's arrival and its own model call, and the backlog is still there when it answers."""
    world = make_world(clip={"batch_size": 4})
    world.ollama.delay_s = 0.05  # every model call takes a while: the worker always has one
    images = write_images(world.inbox / "backlog", 300)
    for image in images:
        world.view.queue.put(image)
    worker = Worker(world.view.live, world.view.queue, world.view.tally)
    worker.thread.start()
    try:
        wait_until(lambda: world.view.tally.outcomes["ok"] >= 8, 120, "the worker to be busy")
        arrived = len(world.ollama.bodies())
        answer = world.client.post(
            "/api/images/analyze",
            files={"image": ("upload.png", png(), "image/png")},
            data={"user_prompt": MARK},
        )
        answered = len(world.ollama.bodies())
    finally:
        world.view.live.stop.set()
        world.view.queue.stop()
        worker.thread.join(60)
    assert answer.status_code == 200
    bodies = world.ollama.bodies()
    ours = [i for i, body in enumerate(bodies) if _is_upload(body)]
    assert len(ours) == 1
    folder_calls_before_ours = ours[0] - arrived
    assert 0 <= folder_calls_before_ours <= 1
    assert answered - arrived <= 3  # ours, at most one before it, at most one right after
    assert world.view.tally.outcomes["ok"] < 250  # the backlog was far from done
    # Ollama's turn went first; CLIP (the tiny model, on the CPU here) takes no GPU turns.
    assert world.view.live.gpu.priority_acquisitions >= 1
