"""Google Drive, one way everywhere: the FUSE mount in Colab, the Drive API elsewhere when
credentials are configured, else a local folder that stands in for Drive.

>>> import colabsession as cs
>>> root = cs.mount()                      # Colab: /content/drive/MyDrive; elsewhere a local folder
>>> loc = cs.drive.resolve("drive:checkpoints/run-1")
>>> loc.fs.makedirs(loc.path, exist_ok=True)
"""

from colabsession._drive.api import (
    configured as api_configured,
)
from colabsession._drive.api import (
    connect,
    disconnect,
    load_credentials,
    sign_in,
    sign_out,
)
from colabsession._drive.location import (
    Location,
    resolve,
)
from colabsession._drive.mount import (
    ensure,
    flush_and_unmount,
    healthy,
    local_notice,
    mount,
)

__all__ = [
    "Location",
    "api_configured",
    "connect",
    "disconnect",
    "ensure",
    "flush_and_unmount",
    "healthy",
    "load_credentials",
    "local_notice",
    "mount",
    "resolve",
    "sign_in",
    "sign_out",
]
