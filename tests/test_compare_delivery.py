"""The order in which Compare's deltas reach the browser when a new photo is uploaded.

Streamlit's server queues a run's deltas and, before a flush, *composes* a delta written to a path already
in the queue into that earlier slot (``ForwardMsgQueue.enqueue``). A placeholder made at the top of the page
and filled once the rest of the skeleton is queued is then sent first: the browser named the new photo while
the previous photo's pictures still stood below it (CI, the browser walk's stale-picture check). AppTest
never flushes during a run, so its queue is the worst case the browser can get — checked here exactly.
"""

from __future__ import annotations

from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.testing.v1.local_script_runner import LocalScriptRunner

from tests.test_app import no_exception, page, upload


def recorded_queues(monkeypatch) -> list[list[ForwardMsg]]:
    """Every script run's queue as the server would send it unflushed (one list per run, in order)."""
    queues: list[list[ForwardMsg]] = []
    original = LocalScriptRunner.forward_msgs

    def forward_msgs(self):
        queue = original(self)
        queues.append(list(queue))
        return queue

    monkeypatch.setattr(LocalScriptRunner, "forward_msgs", forward_msgs)
    return queues


def path(message: ForwardMsg) -> tuple[int, ...]:
    return tuple(message.metadata.delta_path)


def element(message: ForwardMsg):
    return message.delta.new_element if message.HasField("delta") and message.delta.HasField("new_element") else None


def picture_paths(queue: list[ForwardMsg]) -> set[tuple[int, ...]]:
    """Where the page shows a picture (``st.image``) or a table once this queue is delivered."""
    last = {path(m): element(m) for m in queue if m.HasField("delta")}
    return {where for where, shown in last.items()
            if shown is not None and shown.WhichOneof("type") in ("imgs", "dataframe")}


def says(message: ForwardMsg) -> str:
    """The text a line of the page shows: a caption or other markdown, an alert, a progress bar's title."""
    shown = element(message)
    kind = None if shown is None else shown.WhichOneof("type")
    return {"markdown": lambda: shown.markdown.body, "alert": lambda: shown.alert.body,
            "progress": lambda: shown.progress.text}.get(kind, lambda: "")()


def first_naming(queue: list[ForwardMsg], name: str) -> int:
    """The position of the first line of the main page that names ``name``."""
    return next(i for i, m in enumerate(queue) if path(m)[:1] == (0,) and name in says(m))


def test_a_new_photo_is_named_only_after_every_old_picture_is_replaced(monkeypatch, tmp_path):
    queues = recorded_queues(monkeypatch)
    at = page("compare.py", monkeypatch, tmp_path).run()
    no_exception(at)
    before = picture_paths(queues[-1])
    assert len(before) >= 8  # the tiles of the methods and recipes, the colour bar
    upload(at, "new.png")
    no_exception(at)
    queue = queues[-1]
    named = first_naming(queue, "new.png")
    late = {}  # each old picture or table: where the first delta at its place, or an element above it, comes
    for where in sorted(before):
        replaced = next(i for i, m in enumerate(queue) if m.HasField("delta") and (
            path(m) == where or (where[:len(path(m))] == path(m) and element(m) is not None)))
        if replaced > named:
            late[where] = replaced
    assert not late, f"named at {named} of the queue; still standing then (place: replaced at): {late}"
