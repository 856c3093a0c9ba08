"""JupyterHub for a class on one machine: `scripts/hub` (as root) starts it with this file.

Each student is a system user who logs in with their own password (PAM, JupyterHub's
default) and gets a JupyterLab running as that user (LocalProcessSpawner), in their own
home, with the notebooks copied there on first start as nbgitpuller would (a student's
edits are never overwritten). Homes are private (0700): one student cannot read or write
another's files. The kernels run this checkout's package and shipped model offline.

Settings come from the environment, so the same file serves a class and the test:
    MISTRAL_LAB_HUB_PORT        where students connect (default 8000; loopback only unless
                                MISTRAL_LAB_HUB_IP says otherwise, e.g. 0.0.0.0 behind TLS)
    MISTRAL_LAB_HUB_USERS       comma-separated system users allowed in (the class list)
    MISTRAL_LAB_HUB_ADMINS      comma-separated teachers (admin in the hub)
    MISTRAL_LAB_HUB_STATE       the hub's database, cookie secret and logs (default .hub/)
    MISTRAL_LAB_HUB_API_TOKEN   optional: a token for scripts (create users, start servers)
    MISTRAL_LAB_HUB_PYTHON      the students' interpreter (default .venv/bin/python)
    MISTRAL_LAB_HUB_WEIGHTS     the one copy of the weights every kernel maps (default
                                .shared-weights/ in the checkout; readable by every student)

Limits: LocalProcessSpawner cannot enforce CPU or memory limits (JupyterHub honours
mem_limit/cpu_limit only in spawners that implement them: systemdspawner on one machine,
KubeSpawner in Zero to JupyterHub; docs/TEACHING.md gives their values). One kernel of
notebook 03 holds about 0.5 GiB; the thread policy gives each small-model kernel one thread.

One copy of the weights for the class: at start the hub writes the shipped model's fp32
weights once into MISTRAL_LAB_HUB_WEIGHTS (`python -m mistral_lab share-weights`), and every
kernel maps that file read-only (MISTRAL_LAB_SHARED_WEIGHTS; mistral_lab/checkpoints/shared.py)
instead of holding a copy of its own.
"""
import os
import pwd
import shutil
import subprocess
from pathlib import Path

c = get_config()  # noqa: F821  (JupyterHub's config loader defines it)

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv"
STATE = Path(os.environ.get("MISTRAL_LAB_HUB_STATE", REPO / ".hub")).resolve()
STATE.mkdir(parents=True, exist_ok=True, mode=0o700)
PORT = int(os.environ.get("MISTRAL_LAB_HUB_PORT", "8000"))


def _names(var: str) -> set[str]:
    return {n.strip() for n in os.environ.get(var, "").split(",") if n.strip()}


# --- the hub and its proxy: loopback unless told otherwise, state in one folder
c.JupyterHub.bind_url = f"http://{os.environ.get('MISTRAL_LAB_HUB_IP', '127.0.0.1')}:{PORT}"
c.JupyterHub.hub_bind_url = f"http://127.0.0.1:{PORT + 1}"
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{PORT + 2}"
c.ConfigurableHTTPProxy.command = [str(VENV / "node" / "node_modules" / ".bin" / "configurable-http-proxy")]
c.ConfigurableHTTPProxy.pid_file = str(STATE / "proxy.pid")
c.JupyterHub.db_url = f"sqlite:///{STATE / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(STATE / "jupyterhub_cookie_secret")
c.JupyterHub.cleanup_servers = True  # stopping the hub stops every student's server and kernels
c.JupyterHub.cleanup_proxy = True

# --- who may log in: the class list, the teachers as admins
c.Authenticator.allowed_users = _names("MISTRAL_LAB_HUB_USERS")
c.Authenticator.admin_users = _names("MISTRAL_LAB_HUB_ADMINS")

token = os.environ.get("MISTRAL_LAB_HUB_API_TOKEN")
if token:
    c.JupyterHub.services = [{"name": "class-admin", "api_token": token}]
    c.JupyterHub.load_roles = [{"name": "class-admin", "services": ["class-admin"],
                                "scopes": ["admin:users", "admin:servers", "access:servers", "list:users"]}]

# --- each student's JupyterLab: their own system user, their own home
c.JupyterHub.spawner_class = "localprocess"
# The interpreter every student's server and kernels run: the checkout's .venv, unless
# MISTRAL_LAB_HUB_PYTHON names another with the same packages (it must lie where every student
# can reach it: a .venv made from a Python under /root, mode 0700, is not).
PYTHON = os.environ.get("MISTRAL_LAB_HUB_PYTHON", str(VENV / "bin" / "python"))
c.Spawner.cmd = [PYTHON, "-m", "jupyterhub.singleuser"]
c.Spawner.default_url = "/lab/tree/mistral_lab_notebooks"
# Idle kernels culled as scripts/lab does (each holds up to 1 GiB; a walk through the notebooks
# leaves one per notebook): idle 20 minutes, also with a tab open, never while a cell runs.
c.Spawner.args = ["--MappingKernelManager.cull_idle_timeout=1200", "--MappingKernelManager.cull_interval=60",
                  "--MappingKernelManager.cull_connected=True", "--MappingKernelManager.cull_busy=False"]
c.Spawner.notebook_dir = "~"
c.Spawner.environment = {"HF_HUB_OFFLINE": "1"}  # no kernel reaches a model hub
c.Spawner.start_timeout = 180  # eight servers starting at once on two cores
c.Spawner.http_timeout = 180


def place_notebooks(spawner) -> None:
    """Before a student's server starts: a private home with the notebooks in ~/mistral_lab_notebooks,
    copied the first time only (as nbgitpuller does, a student's edits are kept)."""
    user = pwd.getpwnam(spawner.user.name)
    home = Path(user.pw_dir)
    home.mkdir(mode=0o700, exist_ok=True)
    os.chown(home, user.pw_uid, user.pw_gid)
    home.chmod(0o700)
    # not ~/mistral_lab: a folder of that name in a kernel's working directory would shadow the
    # package (Python imports it as an empty namespace package: "cannot import name 'viz'")
    target = home / "mistral_lab_notebooks"
    if not target.exists():
        part = home / ".mistral_lab_notebooks.copying"
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir()
        for nb in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")):
            shutil.copy2(nb, part / nb.name)
        for p in [part, *part.iterdir()]:
            os.chown(p, user.pw_uid, user.pw_gid)
        part.rename(target)  # complete before it takes its name


c.Spawner.pre_spawn_hook = place_notebooks

# --- one copy of the weights for the whole class, written once now (a few seconds), as the
# teacher: the students' kernels only map it (a kernel cannot write here, and would load a
# private copy with a warning if the file were missing).
WEIGHTS = Path(os.environ.get("MISTRAL_LAB_HUB_WEIGHTS", REPO / ".shared-weights")).resolve()
shared = subprocess.run([PYTHON, "-m", "mistral_lab", "share-weights", "--dir", str(WEIGHTS)],
                        cwd=REPO, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
print("[mistral_lab] " + (shared.stdout.strip() if shared.returncode == 0 else  # the hub's log says which
                          "no shared weights, each kernel loads its own copy: "
                          + (shared.stderr.strip().splitlines() or ["share-weights said nothing"])[-1]),
      flush=True)
c.Spawner.environment["MISTRAL_LAB_SHARED_WEIGHTS"] = str(WEIGHTS)
