"""Run code cells in a Jupyter server's kernel over its websocket, as JupyterLab does: what
bench/hub.py uses to run a notebook in each student's own kernel through the hub's proxy.

    result = await run_cells("http://127.0.0.1:8000/user/ana", token, cells)
    # {"outputs": [text per cell], "error": "ename: evalue" or None, "run_s", ...}

Messages follow the Jupyter messaging protocol (v5.3) on the one-socket "channels" endpoint
of jupyter_server: an execute_request per cell on the shell channel; the cell is done when
its execute_reply has come and the kernel has gone idle for it on iopub. Text output is
collected (stream, and the text/plain of results and displays); a cell that fails stops
the run, as Run All does.
"""
from __future__ import annotations

import asyncio
import datetime
import json
import time
import urllib.request
import uuid

from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

CELL_TIMEOUT_S = 300  # one cell of a notebook, on a busy two-core machine


async def run_cells(server: str, token: str, cells: list[str], *, user: str = "lab") -> dict:
    """Start a kernel on the Jupyter server at `server` and run `cells` in order."""
    headers = {"Authorization": f"token {token}"}
    req = urllib.request.Request(f"{server}/api/kernels", method="POST", data=b"{}", headers=headers)
    t0 = time.monotonic()
    kernel = json.loads(await asyncio.to_thread(lambda: urllib.request.urlopen(req, timeout=120).read()))
    url = f"{server.replace('http', 'ws', 1)}/api/kernels/{kernel['id']}/channels"
    ws = await websocket_connect(HTTPRequest(url, headers=headers, connect_timeout=180, request_timeout=180),
                                 max_message_size=1 << 28)  # several kernels starting at once on two cores
    session, outputs, error, started = uuid.uuid4().hex, [], None, time.monotonic()
    try:
        for code in cells:
            status, text, err = await _execute(ws, session, user, code)
            outputs.append(text)
            error = error or err
            if status != "ok":
                break
    finally:
        ws.close()
    end = time.monotonic()
    return {"outputs": outputs, "error": error, "kernel": kernel["id"], "kernel_start_s": round(started - t0, 2),
            "run_s": round(end - started, 2), "t_start": started, "t_end": end}


async def _execute(ws, session: str, user: str, code: str) -> tuple[str, str, str | None]:
    """(status of the execute_reply, the cell's text output, "ename: evalue" or None)."""
    msg_id = uuid.uuid4().hex
    await ws.write_message(json.dumps({
        "header": {"msg_id": msg_id, "username": user, "session": session, "msg_type": "execute_request",
                   "version": "5.3", "date": datetime.datetime.now(datetime.timezone.utc).isoformat()},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True}}))
    text, idle, status, error = [], False, None, None
    while not (idle and status):
        raw = await asyncio.wait_for(ws.read_message(), timeout=CELL_TIMEOUT_S)
        if raw is None:
            raise RuntimeError(f"{user}: the kernel's websocket closed")
        m = json.loads(raw) if isinstance(raw, str) else {}  # bytes: a binary message (widget buffers)
        if m.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind, content = m["msg_type"], m["content"]
        if kind == "stream":
            text.append(content["text"])
        elif kind in ("execute_result", "display_data"):
            text.append(content["data"].get("text/plain", ""))
        elif kind == "error":
            error = f"{content['ename']}: {content['evalue']}"
        elif kind == "status" and content["execution_state"] == "idle":
            idle = True
        elif kind == "execute_reply":
            status = content["status"]
    return status, "".join(text), error
