"""Helpers the server tests share (imported like tolerances: tests/ is on sys.path)."""
import subprocess


def stop(proc: subprocess.Popen, timeout: float = 15) -> None:
    """Terminate a server process, and kill it if it has not gone within `timeout` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
