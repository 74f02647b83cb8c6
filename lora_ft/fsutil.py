"""Temporary directories that become published outputs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def publishable_temp_dir(parent: Path, prefix: str, suffix: str = "") -> Path:
    """``tempfile.mkdtemp`` in ``parent``, with the permissions ``mkdir`` would have given it.

    ``mkdtemp`` creates its directory 0700 so that no one else can race into it; that protection is
    for the writing, not for the result, which is renamed into place as the user's output and must be
    as readable as any directory they create (0755 under the usual umask 022).
    """
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    return tmp
